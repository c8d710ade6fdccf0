"""One step of benchmarks/gpu/measure.py, run in a process of its own so that it can be time-boxed:

    python3 benchmarks/gpu/workers.py STEP RESULT.json [--work DIR] [--quick]

STEP is `environment`, `gpt_fsdp`, or one of `MODELS` (a recipe through `litlab fit` against its bare
loop, benchmarks/gpu/bare.py). The result is rewritten after each part, so a step stopped at its time
limit still leaves what it measured. Runs, checkpoints and data go to DIR (default: a new temporary
folder), never beside the result: on the lent machine only the result's folder comes back.
"""

import os

os.environ["WANDB_MODE"] = "disabled"  # litlab leaves the W&B logger out; wandb is not installed there
os.environ.setdefault("WANDB_SILENT", "true")

import argparse
import csv
import importlib.metadata
import json
import logging
import pickle
import platform
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # this checkout, even where an editable install points elsewhere

import numpy as np
import torch
import yaml

EXPERIMENTS = ROOT / "experiments"
FSDP_STEPS = 200


@dataclass(frozen=True)
class Model:
    """A recipe and how it is run: `full` on a GPU (bf16-mixed, compiled where `compile`), `quick` tiny on a CPU."""

    config: str
    epochs: int  # the first is warm-up; the rest are timed
    quick_epochs: int
    limit: int | None = None  # training batches an epoch
    quick_limit: int | None = None
    compile: bool = False  # only models.LanguageModel has `compile`
    overrides: dict = field(default_factory=dict)  # dotted keys of the config, on both sides
    quick_overrides: dict = field(default_factory=dict)


MODELS = {
    "digits_cnn": Model("digits/cnn.yaml", epochs=11, quick_epochs=2, compile=True),
    # CIFAR-10's shape (50,000 training and 10,000 test images, 32x32x3) in its real files, of noise:
    # nothing can be downloaded there. Quick: 5 x 32 training images, batches of 32.
    "cifar_resnet20": Model("cifar10/resnet_fast.yaml", epochs=4, quick_epochs=2, compile=True,
                            overrides={"data.init_args.download": False},
                            quick_overrides={"data.init_args.batch_size": 32}),
    # Sample prompts off: their generation runs in on_validation_end, which Speed counts as training time.
    "gpt_small": Model("text/gpt_small.yaml", epochs=5, quick_epochs=2, quick_limit=8, compile=True,
                       overrides={"model.init_args.sample_prompts": None},
                       quick_overrides={"model.init_args.backbone.init_args.d_model": 32,
                                        "model.init_args.backbone.init_args.depth": 1,
                                        "model.init_args.backbone.init_args.heads": 2,
                                        "model.init_args.backbone.init_args.max_len": 32,
                                        "data.init_args.block_size": 32, "data.init_args.batch_size": 8}),
}
CIFAR_IMAGES = {False: (10_000, 10_000), True: (32, 32)}  # (per training file, test), by quick
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def write(result: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


def environment() -> dict:
    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    cuda = torch.cuda.is_available()
    info = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": cuda,
        "lightning": version("lightning"),
        "jsonargparse": version("jsonargparse"),
        "jsonargparse_from": str(Path(importlib.metadata.distribution("jsonargparse").locate_file(""))) if version("jsonargparse") else None,
        "torchvision": version("torchvision"),
        "wandb": version("wandb"),
        "cpu_count": os.cpu_count(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(device=props.name, capability=f"{props.major}.{props.minor}",
                    gpu_memory_gb=props.total_memory / 1e9, multiprocessors=props.multi_processor_count)
    else:
        info["device"] = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                               if line.startswith("model name")), platform.processor() or "cpu") \
            if os.path.exists("/proc/cpuinfo") else platform.processor() or "cpu"
    return info


# ---- configs: defaults.yaml under the recipe, with overrides, as the CLI would merge the keys read here ----

def load_config(name: str, overrides: dict) -> dict:
    defaults, recipe = (yaml.safe_load(p.read_text()) for p in (EXPERIMENTS / "defaults.yaml", EXPERIMENTS / name))
    cfg = {
        "trainer": {**defaults["trainer"], **recipe.get("trainer", {})},
        "data": {**defaults["data"], **recipe.get("data", {})},
        "model": recipe["model"],
    }
    for dotted, value in overrides.items():
        *parents, last = dotted.split(".")
        node = cfg
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return cfg


def flag(dotted: str, value) -> str:
    return f"--{dotted}={value if isinstance(value, str) else json.dumps(value)}"


# ---- synthetic CIFAR-10, in torchvision's real format, accepted by its MD5 check in this process ----

def write_cifar(root: Path, per_file: int, n_test: int) -> None:
    from torchvision.datasets import CIFAR10

    folder = root / CIFAR10.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    test_names = {name for name, _ in CIFAR10.test_list}
    for name, _ in CIFAR10.train_list + CIFAR10.test_list:
        n = n_test if name in test_names else per_file
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)  # rows: all red, then green, then blue
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": rng.integers(0, 10, n).tolist()}, f)
    with open(folder / CIFAR10.meta["filename"], "wb") as f:
        pickle.dump({CIFAR10.meta["key"]: [f"class{c}" for c in range(10)]}, f)
    trust_cifar(root)


def trust_cifar(root: Path) -> None:
    """torchvision checks CIFAR files against the real files' MD5s: accept the ones written here."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import calculate_md5

    folder = root / CIFAR10.base_folder
    md5 = lambda name: calculate_md5(str(folder / name))  # noqa: E731
    CIFAR10.train_list = [[name, md5(name)] for name, _ in CIFAR10.train_list]
    CIFAR10.test_list = [[name, md5(name)] for name, _ in CIFAR10.test_list]
    CIFAR10.meta = {**CIFAR10.meta, "md5": md5(CIFAR10.meta["filename"])}


# ---- litlab's side: `litlab fit` in this process, its figures from the run's speed.csv ----

def litlab_fit(args: list[str]):
    from experiments.cli import LitlabCLI

    sys.argv = sys.argv[:1]  # LightningCLI reads args= only
    return LitlabCLI(args=["fit", *args, *QUIET])


def speed_figures(cli, bare_flops: float | None = None) -> dict:
    """The epochs after the first, from speed.csv: throughputs over their summed time, MFU weighted by time.
    Where litlab counted no FLOPs (a compiled model), `bare_flops` (the same step's count) stands in."""
    rows = list(csv.DictReader((Path(cli.trainer.log_dir) / "speed.csv").open()))
    number = lambda row, key: float(row[key]) if row.get(key) else None  # noqa: E731
    timed = rows[1:] or rows
    seconds = sum(number(r, "train_seconds") for r in timed)
    samples = sum(number(r, "samples_per_s") * number(r, "train_seconds") for r in timed)
    tokens = sum((number(r, "tokens_per_s") or 0) * number(r, "train_seconds") for r in timed)
    peak = number(rows[-1], "peak_flops")
    steps = number(timed[-1], "step") - (number(rows[0], "step") if len(rows) > 1 else 0)
    out = {
        "epochs": len(rows), "timed_epochs": len(timed), "steps": int(steps), "seconds": seconds,
        "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds if tokens else None,
        "flops_per_batch": number(rows[-1], "flops_per_batch"), "peak_flops": peak,
        "peak_memory_gb": max(number(r, "peak_memory_gb") for r in rows), "global_step": cli.trainer.global_step,
    }
    if all(number(r, "mfu") is not None for r in timed):
        out["mfu"] = sum(number(r, "mfu") * number(r, "train_seconds") for r in timed) / seconds
    elif bare_flops and peak:
        out["mfu"], out["mfu_from"] = bare_flops * steps / seconds / peak, "the bare loop's FLOP count of the same step"
    else:
        out["mfu"] = None
    return out


def build_data(spec: dict):
    """The recipe's DataModule, built by hand: an `augment` mapping becomes the Augmentation the CLI makes of it."""
    import bare
    from datamodules.transforms import Augmentation

    args = dict(spec.get("init_args", {}))
    if isinstance(args.get("augment"), dict):
        args["augment"] = Augmentation(**args["augment"])
    return bare.build({**spec, "init_args": args})


def compare(name: str, quick: bool, result_path: Path, scratch: Path) -> dict:
    import bare

    spec = MODELS[name]
    cuda = torch.cuda.is_available() and not quick
    setup = bare.Setup(torch.device("cuda" if cuda else "cpu"), bf16=cuda, compile=cuda and spec.compile)
    epochs = spec.quick_epochs if quick else spec.epochs
    limit = spec.quick_limit if quick else spec.limit
    overrides = {**spec.overrides, **(spec.quick_overrides if quick else {})}
    if "text/" in spec.config:
        overrides["data.init_args.cache_dir"] = str(scratch / "text-cache")
    if "cifar" in spec.config:
        write_cifar(scratch / "data", *CIFAR_IMAGES[quick])
        overrides["data.init_args.root"] = str(scratch / "data")
    cfg = load_config(spec.config, overrides)
    precision = "bf16-mixed" if setup.bf16 else "32-true"
    result = {"config": f"experiments/{spec.config}", "device": str(setup.device), "precision": precision,
              "compile": setup.compile, "epochs": epochs, "timed_epochs": epochs - 1,
              "limit_train_batches": limit, "overrides": overrides}
    write(result, result_path)

    # The bare loop first: on a CPU, peak memory is the process's resident peak, which only grows.
    bare_loop = bare.language_model if cfg["model"]["class_path"] == "models.LanguageModel" else bare.classifier
    result["bare"] = bare_loop(cfg, build_data(cfg["data"]), epochs, limit, setup)
    write(result, result_path)
    if setup.device.type == "cuda":
        torch.cuda.empty_cache()

    args = ["--config", str(EXPERIMENTS / spec.config), "--seed_everything=0", f"--trainer.max_epochs={epochs}",
            f"--trainer.precision={precision}", f"--trainer.accelerator={setup.device.type}", "--trainer.devices=1",
            *(flag(k, v) for k, v in overrides.items())]
    if spec.compile:
        args.append(f"--model.init_args.compile={json.dumps(setup.compile)}")
    if limit is not None:
        args.append(f"--trainer.limit_train_batches={limit}")
    if quick:
        args += ["--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
    result["litlab_args"] = args
    result["litlab"] = speed_figures(litlab_fit(args), result["bare"]["flops_per_batch"])
    result["ratio"] = {key: result["litlab"][key] / result["bare"][key]
                       for key in ("samples_per_s", "tokens_per_s", "mfu", "peak_memory_gb")
                       if result["litlab"].get(key) and result["bare"].get(key)}
    return result


def gpt_fsdp(result_path: Path, scratch: Path) -> dict:
    config = EXPERIMENTS / "text" / "gpt_fsdp.yaml"
    args = ["--config", str(config), "--trainer.devices=1", f"--trainer.max_steps={FSDP_STEPS}",
            f"--data.init_args.cache_dir={scratch / 'text-cache'}"]
    result = {"config": "experiments/text/gpt_fsdp.yaml", "args": args}
    write(result, result_path)
    cli = litlab_fit(args)
    result["litlab"] = speed_figures(cli)
    metrics = cli.trainer.callback_metrics
    result.update({key.replace("/", "_"): float(metrics[key]) for key in ("val/bpb", "test/bpb") if key in metrics})
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["environment", "gpt_fsdp", *MODELS])
    parser.add_argument("result", type=Path)
    parser.add_argument("--work", type=Path, help="where runs, checkpoints and data go (default: a new temporary folder)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    step, result_path, quick = args.step, args.result.resolve(), args.quick
    scratch = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix=f"litlab-gpu-{step}-"))
    scratch.mkdir(parents=True, exist_ok=True)
    os.chdir(scratch)
    for name in ("lightning.pytorch", "lightning.fabric"):  # per-run banners, not results
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(num_workers|log_every_n_steps).*")
    if step == "environment":
        result = environment()
    elif step == "gpt_fsdp":
        result = gpt_fsdp(result_path, scratch)
    else:
        result = compare(step, quick, result_path, scratch)
    write(result, result_path)


if __name__ == "__main__":
    main()
