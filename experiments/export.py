"""`litlab export`: a trained model out of the training framework, checked against itself.

    litlab export --config X.yaml --ckpt_path CKPT --format safetensors|onnx|exported_program|huggingface [--output PATH]

The model (the task's forward: backbone and head, in eval mode, no optimizer or training
state) is written in the chosen format, with `<output>.json` beside it: the input shape and
dtype, the normalisation the data applies first, the class names, and what the check found.
Every export is checked where it is written: the exported file, loaded back by its own
runtime (safetensors into a fresh copy of the model, ONNX in onnxruntime, the exported
program through torch.export.load), runs real inputs from the DataModule's test split,
in two batch sizes (the batch axis is dynamic), and must give the PyTorch model's outputs
within `TOLERANCE`, else the file is removed and the export fails with the difference.

A LoRA run is exported merged: its adapters are checked against their base and folded into it,
so every format holds plain weights (float32 ones for a QLoRA run's 4-bit base). `huggingface` writes a `save_pretrained` folder that plain `transformers` loads and runs
(`experiments/export_huggingface.py`).
"""

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Literal

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from models.checkpoints import check_fits, read_checkpoint, read_state_dict
from models.contract import class_names
from models.errors import ConfigError
from models.lazy import has_lazy, materialize

Format = Literal["safetensors", "onnx", "exported_program", "huggingface"]
SUFFIXES = {"safetensors": ".safetensors", "onnx": ".onnx", "exported_program": ".pt2", "huggingface": "-huggingface"}
# Largest allowed |exported - PyTorch| per output, as atol + rtol * |PyTorch| (float32 kernels
# of different runtimes sum in different orders); safetensors must match exactly.
TOLERANCE = {"safetensors": (0.0, 0.0), "onnx": (1e-4, 1e-4), "exported_program": (1e-5, 1e-5),
             "huggingface": (1e-5, 1e-5)}


class ExportMismatch(ConfigError):
    """The exported model does not give the PyTorch model's outputs."""


class Inference(nn.Module):
    """The task's forward alone, as a plain module: what every format exports."""

    def __init__(self, task: LightningModule, masked: bool) -> None:
        super().__init__()
        self.task, self.masked = task, masked

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.task(x, padding_mask) if self.masked else self.task(x)


def sample_inputs(datamodule: LightningDataModule, count: int = 2) -> list[tuple[torch.Tensor, ...]]:
    """`count` batches of real model input (and padding masks, for padded tokens) from the test split,
    the last one shorter, so that the check covers two batch sizes."""
    datamodule.setup("test")
    batches = []
    for batch in datamodule.test_dataloader():
        x = batch["input"]
        masked = "padding_mask" in batch
        inputs = (x, batch["padding_mask"]) if masked else (x,)
        size = max(len(x) // 2, 1) if batches else len(x)  # a second, different batch size
        batches.append(tuple(t[:size] for t in inputs))
        if len(batches) == count:
            break
    if not batches:
        raise ConfigError("The data's test split is empty; export checks the model on real test inputs.")
    return batches


def load_weights(model: LightningModule, datamodule: LightningDataModule, checkpoint: str) -> None:
    """Size lazy layers as training did, then fill the model from the checkpoint (read safely)."""
    if has_lazy(model):
        with torch.no_grad():
            materialize(model, datamodule.example_input, model.dry_run)
    state = read_state_dict(checkpoint)
    check_fits(model, state, checkpoint)
    model.load_state_dict(state, strict=False)  # strict but for the parts the task restores itself


def export_model(
    model: LightningModule, datamodule: LightningDataModule, checkpoint: str, format: Format, output: Path
) -> Path:
    """Write `model` in `format` at `output` and its description beside it; returns the model file."""
    if format not in SUFFIXES:
        raise ConfigError(f"--format must be one of {', '.join(SUFFIXES)}; got {format!r}.")
    if format == "huggingface":
        from experiments import export_huggingface

        export_huggingface.plain_class(model)  # a task it cannot export is refused before anything is read
        export_huggingface.check_folder(output)
    batches = sample_inputs(datamodule)
    load_weights(model, datamodule, checkpoint)
    merge = getattr(model, "merge_adapters", None)
    if merge is not None:  # LoRA: the adapters checked against their base, then folded into it: plain weights out
        merge(read_checkpoint(checkpoint))
    model.eval()
    masked = len(batches[0]) == 2
    module = Inference(model, masked).eval()
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = [module(*inputs) for inputs in batches]
        if format == "huggingface":
            run = export_huggingface.write(module, batches[0], output, datamodule)
        else:
            write = {"safetensors": _safetensors, "onnx": _onnx, "exported_program": _exported_program}[format]
            run = write(module, batches[0], output)
        got = [run(*inputs) for inputs in batches]
    difference, within = _difference(expected, got, *TOLERANCE[format])
    count = sum(len(inputs[0]) for inputs in batches)
    if not within:
        _remove(output)
        atol, rtol = TOLERANCE[format]
        raise ExportMismatch(
            f"The {format} export of {type(model).__name__} gives outputs up to {difference:.3g} away from the PyTorch "
            f"model's on {count} test inputs (allowed {atol:g} + {rtol:g} x |output|); nothing was written. "
            "Try another --format."
        )
    description = describe(model, datamodule, batches[0], format, difference, count)
    output.with_name(output.name + ".json").write_text(json.dumps(description, indent=2) + "\n")
    rank_zero_info(
        f"Exported {type(model).__name__} as {format} to {output} (checked on "
        f"{description['check']['inputs']} test inputs: max |difference| {difference:.3g}); described in "
        f"{output}.json"
    )
    return output


def _difference(expected: list[torch.Tensor], got: list[torch.Tensor], atol: float, rtol: float) -> tuple[float, bool]:
    """The largest |got - expected| over all outputs, and whether every one is within atol + rtol * |expected|."""
    worst, within = 0.0, True
    for e, g in zip(expected, got):
        e, g = e.float(), torch.as_tensor(g).float().reshape(e.shape)
        gap = (g - e).abs()
        worst = max(worst, float(gap.max()))
        within = within and bool((gap <= atol + rtol * e.abs()).all())
    return worst, within


def _safetensors(module: Inference, example: tuple[torch.Tensor, ...], output: Path):
    import safetensors.torch

    state = {key: value.detach().contiguous() for key, value in module.task.state_dict().items()}
    safetensors.torch.save_file(state, str(output), metadata={"task": type(module.task).__qualname__})
    fresh = copy.deepcopy(module)
    fresh.task.load_state_dict(safetensors.torch.load_file(str(output)), strict=True)
    return fresh


def _dynamic_batch(example: tuple[torch.Tensor, ...]) -> tuple[dict[int, object], ...]:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    return tuple({0: batch} for _ in example)


def _exported_program(module: Inference, example: tuple[torch.Tensor, ...], output: Path):
    program = torch.export.export(module, example, dynamic_shapes=_dynamic_batch(example))
    torch.export.save(program, str(output))
    return torch.export.load(str(output)).module()


def _onnx(module: Inference, example: tuple[torch.Tensor, ...], output: Path):
    try:
        import onnxruntime
    except ImportError:
        raise ConfigError("--format onnx needs onnx, onnxscript and onnxruntime; pip install 'litlab[onnx]'.") from None
    names = ["input", "padding_mask"][: len(example)]
    size = sum(p.numel() * p.element_size() for p in module.parameters())
    torch.onnx.export(
        module, example, str(output), input_names=names, output_names=["output"],
        dynamic_shapes=_dynamic_batch(example), dynamo=True, verbose=False,
        external_data=size > 1 << 30,  # one file, unless the weights near protobuf's 2 GB limit
    )
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    feeds = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {n: t.numpy() for n, t in zip(feeds, inputs)})[0])

    return run


def _remove(output: Path) -> None:
    if output.is_dir():
        shutil.rmtree(output)
    else:
        output.unlink(missing_ok=True)


def describe(model: LightningModule, datamodule: LightningDataModule, example: tuple[torch.Tensor, ...],
             format: Format, difference: float, count: int) -> dict:
    """What a user of the exported file needs: its input, the preprocessing before it, the classes."""
    mean, std = getattr(datamodule, "mean", None), getattr(datamodule, "std", None)
    number = getattr(model, "num_classes", None) or getattr(datamodule, "num_classes", None)
    classes = class_names(model, datamodule, number) if number else None
    inputs = {"input": {"shape": ["batch", *example[0].shape[1:]], "dtype": str(example[0].dtype).removeprefix("torch.")}}
    if len(example) == 2:
        inputs["padding_mask"] = {"shape": ["batch", *example[1].shape[1:]], "dtype": "bool",
                                  "meaning": "True at padding positions"}
    normalization = None
    if mean is not None:
        normalization = {"mean": list(mean), "std": list(std),
                         "how": "images with values in [0, 1], then (x - mean) / std per channel"}
        if getattr(datamodule, "reshape", None) is not None:
            normalization["then"] = "the image's rows read as a sequence: (C, H, W) -> (C * H, W)"
    description = {
        "format": format,
        "task": f"{type(model).__module__}.{type(model).__qualname__}",
        "inputs": inputs,
        "normalization": normalization,
        "classes": classes,
        "output": "class logits (softmax for probabilities)" if classes else "the task's forward output",
        "check": {"inputs": count, "max_abs_difference": difference,
                  "tolerance": dict(zip(("atol", "rtol"), TOLERANCE[format]))},
    }
    if format == "huggingface":
        from experiments import export_huggingface

        description["huggingface"] = export_huggingface.usage(model, datamodule)
    return description


def default_output(log_dir: str | None, format: Format) -> Path:
    return Path(log_dir or os.getcwd()) / f"model{SUFFIXES.get(format, '')}"


class LitlabTrainer(Trainer):
    """Lightning's Trainer, plus the method behind `litlab export` (LightningCLI makes one
    subcommand of each Trainer method it is told of) and `litlab fit --allow_changes`."""

    def fit(
        self,
        model: LightningModule,
        train_dataloaders=None,
        val_dataloaders=None,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        allow_changes: bool = False,
    ) -> None:
        """Train, or with --ckpt_path resume a run.

        Args:
            ckpt_path: the checkpoint to resume (a .ckpt file, a run folder, or last).
            weights_only: passed to Lightning's torch.load of --ckpt_path; litlab reads the file with its own
                safe reader first (tensors and plain values only), so it is best left unset.
            allow_changes: resume although the config differs from the run's config.yaml in what
                shapes training; the changes are recorded in the run's changes.yaml.
        """
        super().fit(model, train_dataloaders, val_dataloaders, datamodule, ckpt_path, weights_only)

    def validate(
        self,
        model: LightningModule | None = None,
        dataloaders=None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ):
        """Score a checkpoint on the validation split; the metrics go to the run's validate/ folder.

        Args:
            ckpt_path: the checkpoint to score (a .ckpt file, a run folder, or last).
            weights_only: passed to Lightning's torch.load of --ckpt_path; litlab reads the file with its own
                safe reader first (tensors and plain values only), so it is best left unset.
        """
        return super().validate(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def test(
        self,
        model: LightningModule | None = None,
        dataloaders=None,
        ckpt_path: str | None = None,
        verbose: bool = True,
        datamodule: LightningDataModule | None = None,
        weights_only: bool | None = None,
    ):
        """Score a checkpoint on the test split; the metrics go to the run's test/ folder.

        Args:
            ckpt_path: the checkpoint to score (a .ckpt file, a run folder, or last).
            weights_only: passed to Lightning's torch.load of --ckpt_path; litlab reads the file with its own
                safe reader first (tensors and plain values only), so it is best left unset.
        """
        return super().test(model, dataloaders, ckpt_path, verbose, datamodule, weights_only)

    def predict(
        self,
        model: LightningModule | None = None,
        dataloaders=None,
        datamodule: LightningDataModule | None = None,
        return_predictions: bool | None = None,
        ckpt_path: str | None = None,
        weights_only: bool | None = None,
        inputs: str | None = None,
    ):
        """Predict on the test split, or on new inputs; the rows go to predictions.csv in the run.

        Args:
            ckpt_path: the checkpoint to predict with (a .ckpt file, a run folder, or last).
            weights_only: passed to Lightning's torch.load of --ckpt_path; litlab reads the file with its own
                safe reader first (tensors and plain values only), so it is best left unset.
            inputs: new data to predict on instead of the test split: for image data an image
                folder, an image file, or a .txt list of image paths (relative to the list's folder).
        """
        if inputs is not None:
            if datamodule is None or not hasattr(datamodule, "read_inputs"):
                raise ConfigError("--inputs needs a litlab DataModule to read them; give data: in the config.")
            datamodule.read_inputs(inputs)
        return super().predict(model, dataloaders, datamodule, return_predictions, ckpt_path, weights_only)

    def export(
        self,
        model: LightningModule,
        datamodule: LightningDataModule | None = None,
        ckpt_path: str | None = None,
        format: Format = "safetensors",
        output: str | None = None,
    ) -> Path:
        """Write the trained model as safetensors, ONNX, a torch.export program or a transformers folder, checked.

        Args:
            ckpt_path: the checkpoint to export (a .ckpt file, a run folder, or last).
            format: safetensors, onnx, exported_program or huggingface (a folder; for a model with a
                models.backbones.HuggingFace backbone).
            output: the file (or huggingface folder) to write (default: model.<suffix>, or model-huggingface,
                in this command's run directory).
        """
        path = Path(output) if output else default_output(self.log_dir, format)
        return export_model(model, datamodule, ckpt_path, format, path)
