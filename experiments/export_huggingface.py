"""`litlab export --format huggingface`: a `save_pretrained` folder that plain `transformers` loads.

It writes a `save_pretrained` folder (config.json, model.safetensors, and the data's
tokenizer files where it has a Hugging Face tokenizer) that plain `transformers` loads and runs,
checked by loading it with the Auto class named in the JSON, nothing of litlab in the way. It
exports a task whose backbone is `models.backbones.HuggingFace`:

- a `LanguageModel`: the backbone's model with its own head, as it is (`AutoModelForCausalLM` or
  `AutoModelForMaskedLM`); its logits are the task's;
- a `Classifier` (`FineTune`, a `Distill` student) whose model type's own image-classification
  head is litlab's (the first token, then one Linear with bias: `OWN_HEAD`) and whose backbone
  pools the first token: that model (`AutoModelForImageClassification`), its logits the task's;
- any other `Classifier`: no architecture's sequence-classification head is litlab's (BERT's
  adds a tanh pooler, decoders' have no bias and find the last token by the padding id), so
  the folder holds the backbone alone (`AutoModel`) and `head.safetensors` beside it, the head's
  `weight` and `bias`; the logits are `last_hidden_state`, pooled as the JSON says, times
  weight.T plus bias.

A classifier's config.json names its classes (`id2label`, `label2id`). Byte-level text
(`tokenizer: bytes`) has no tokenizer files: the JSON says how its ids are made.
"""

import copy
import importlib
import inspect
import shutil
from pathlib import Path

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn

from models.backbones.huggingface import HuggingFace, quiet
from models.classifier import Classifier
from models.contract import class_names
from models.errors import ConfigError
from models.language_model import LanguageModel
from models.tokenizer import END, MASK, PAD, HuggingFaceTokenizer

# Model types whose own image-classification model is a Classifier on the first token:
# last_hidden_state[:, 0], then one Linear with bias (read in transformers' modeling_<type>.py).
OWN_HEAD = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification",
            "vit_msn": "ViTMSNForImageClassification"}
HEAD_FILE = "head.safetensors"  # a Classifier's head, beside a backbone exported without one


def plain_class(task: LightningModule) -> tuple[str, bool]:
    """The transformers Auto class that loads `task`'s huggingface export, and whether its head is a
    file of its own (`HEAD_FILE`); one sentence where the format cannot export the task."""
    backbone = getattr(task, "backbone", None)
    if not isinstance(backbone, HuggingFace) or not isinstance(task, (LanguageModel, Classifier)):
        what = type(task).__name__ + (f" with a {type(backbone).__name__} backbone" if backbone is not None else "")
        raise ConfigError(
            "--format huggingface exports a LanguageModel or Classifier (FineTune, Distill) whose backbone is "
            f"models.backbones.HuggingFace, and this is a {what}; export it as safetensors, onnx or exported_program."
        )
    if isinstance(task, LanguageModel):
        return {"causal": "AutoModelForCausalLM", "masked": "AutoModelForMaskedLM"}[backbone.lm_head], False
    if backbone.image and backbone.pool == "first" and backbone.model.config.model_type in OWN_HEAD:
        return "AutoModelForImageClassification", False
    return "AutoModel", True


def check_folder(output: Path) -> None:
    """A huggingface export is a folder of its own: a new or empty one, or an earlier export (replaced)."""
    earlier = output.is_dir() and (output / "config.json").is_file()
    if output.exists() and not earlier and not (output.is_dir() and not any(output.iterdir())):
        raise ConfigError(f"--output {output} already holds other files, and a huggingface export is a folder of its "
                          "own; give a new or empty folder (an earlier export there is replaced).")
    if earlier:
        shutil.rmtree(output)


def write(module: nn.Module, example: tuple[torch.Tensor, ...], output: Path, datamodule: LightningDataModule):
    import safetensors.torch

    transformers = importlib.import_module("transformers")  # there: the backbone is built with it
    task, backbone = module.task, module.task.backbone
    name, head_file = plain_class(task)
    classes = class_names(task, datamodule, task.num_classes) if isinstance(task, Classifier) else None
    with quiet(transformers):
        if name == "AutoModelForImageClassification":
            config = _labelled(copy.deepcopy(backbone.model.config), classes)
            plain = getattr(transformers, OWN_HEAD[config.model_type])(config)
            plain.base_model.load_state_dict(backbone.encoder.state_dict())  # strict: every weight, no other
            plain.classifier.load_state_dict(task.head.state_dict())
            plain.save_pretrained(output)
        elif head_file:
            backbone.encoder.save_pretrained(output)  # the model without its own head or pooler
            _labelled(transformers.AutoConfig.from_pretrained(output), classes).save_pretrained(output)
            head = {key: value.detach().contiguous() for key, value in task.head.state_dict().items()}
            safetensors.torch.save_file(head, str(output / HEAD_FILE), metadata={"pool": backbone.pool})
        else:
            backbone.model.save_pretrained(output)
        tokenizer = getattr(datamodule, "tokenizer", None)
        if isinstance(tokenizer, HuggingFaceTokenizer):
            tokenizer.save(output)
        # The check reads the folder as any user of transformers would (a pooler that litlab
        # never uses, BERT's, is reported missing: quiet).
        plain = getattr(transformers, name).from_pretrained(output, trust_remote_code=False).eval()
    head = safetensors.torch.load_file(str(output / HEAD_FILE)) if head_file else None
    image = plain.main_input_name == "pixel_values"
    interpolate = "interpolate_pos_encoding" in inspect.signature(plain.forward).parameters

    def run(x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if image:
            if x.shape[1] == 1 and plain.config.num_channels == 3:
                x = x.expand(-1, 3, -1, -1)
            inputs = {"pixel_values": x, **({"interpolate_pos_encoding": True} if interpolate else {})}
        else:
            inputs = {"input_ids": x}
            if padding_mask is not None:
                inputs["attention_mask"] = (~padding_mask).long()
        out = plain(**inputs)
        if head is None:
            return out.logits
        pooled = _pool(out.last_hidden_state, None if image else padding_mask, backbone.pool)
        return pooled @ head["weight"].T + head["bias"]

    return run


def _labelled(config, classes: list[str]):
    """`config` naming the classifier's classes, as transformers' pipelines and model cards read them."""
    config.id2label = dict(enumerate(classes))
    config.label2id = {label: i for i, label in enumerate(classes)}
    return config


def _pool(features: torch.Tensor, padding_mask: torch.Tensor | None, pool: str) -> torch.Tensor:
    """One vector (B, F) of hidden states (B, T, F): the mean over real tokens, the first, or the last real one."""
    if pool == "first":
        return features[:, 0]
    real = ~padding_mask if padding_mask is not None else torch.ones(features.shape[:2], dtype=torch.bool)  # (B, T)
    if pool == "mean":
        weights = real.to(features.dtype).unsqueeze(-1)
        return (features * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)
    last = real.long().cumsum(dim=1).argmax(dim=1)  # (B,): the last real position
    return features[torch.arange(len(features)), last]


def usage(task: LightningModule, datamodule: LightningDataModule) -> dict:
    """How plain transformers runs the folder to the task's outputs."""
    backbone = task.backbone
    name, head_file = plain_class(task)
    if backbone.image:
        grey = " (a grey image repeated to 3 channels)" if backbone.channels == 3 else ""
        size = ", interpolate_pos_encoding=True" if backbone.interpolate else ""
        call = f"model(pixel_values=x{size}), x as in inputs{grey}"
    else:
        call = "model(input_ids=input, attention_mask=1 where padding_mask is False, else 0)"
    usage = {"load": f"transformers.{name}.from_pretrained(folder)", "call": call}
    if head_file:
        real = "" if backbone.image else " real"  # an image has no padding
        pool = {"mean": f"the mean of last_hidden_state over its{real} tokens", "first": "last_hidden_state[:, 0]",
                "last": f"last_hidden_state at its last{real} token"}[backbone.pool]
        usage["head"] = {"file": HEAD_FILE, "pool": pool, "logits": "pooled @ weight.T + bias"}
    else:
        usage["output"] = ".logits"
    if not backbone.image:
        tokenizer = getattr(datamodule, "tokenizer", None)
        usage["tokenizer"] = (
            "transformers.AutoTokenizer.from_pretrained(folder)" if isinstance(tokenizer, HuggingFaceTokenizer) else
            f"none: the model reads litlab's byte-level ids, a text's UTF-8 bytes (0-255), {END} ending a document, "
            f"{PAD} padding, {MASK} masking"
        )
    return usage
