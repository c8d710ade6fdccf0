"""Per-step overhead of `litlab fit` over an exact hand-written PyTorch loop, in one process.

    .venv/bin/python benchmarks/overhead.py                     # or: --experiments mlp --rounds 3

Each round runs every experiment twice, interleaved: once through `litlab fit` and once
as a plain PyTorch loop with the same model, data, optimizer, schedule and epochs, which
goes first alternating by round. litlab's time is the fit loop only (trainer.fit: set-up,
sanity check, training, validation each epoch, checkpoints), not parsing nor the final
test. Prints a Markdown table of medians and of the litlab / hand ratio over rounds.
"""

import os

# One thread on both sides: thread start-up and scheduling noise would swamp small steps.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"

import argparse
import contextlib
import gc
import importlib
import io
import logging
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

# Benchmark the checkout this file is in, even where an editable install points elsewhere:
# path entries are searched before setuptools' editable finder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

import models
from datamodules.samples import TensorSamples, whole_batch
from experiments.cli import DEFAULTS, LitlabCLI
from models.lazy import materialize
from models.optim import configure_optimization


class TimedCLI(LitlabCLI):
    """LitlabCLI that times trainer.fit alone; the test in after_fit is left out."""

    def before_fit(self) -> None:
        gc.collect()  # neither side pays for the other's garbage
        self.start = time.perf_counter()

    def after_fit(self) -> None:
        self.seconds = time.perf_counter() - self.start
        self.steps = self.trainer.global_step
        super().after_fit()


def litlab(config: Path, seed: int, epochs: int) -> tuple[float, int]:
    args = ["fit", "--config", str(config), "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false", f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}"]
    with contextlib.redirect_stdout(io.StringIO()):  # the closing report, once per run, would bury the table
        cli = TimedCLI(args=args)
    return cli.seconds, cli.steps


def build(spec: dict, call: bool = True):
    """A YAML `class_path` / `init_args` entry, built (or, `call=False`, bound) by hand."""
    module, _, name = spec["class_path"].rpartition(".")
    cls, kwargs = getattr(importlib.import_module(module), name), spec.get("init_args", {})
    return cls(**kwargs) if call else partial(cls, **kwargs)


def load_config(config: Path) -> dict:
    """defaults.yaml under the experiment's YAML: the few keys the hand loop reads."""
    defaults, experiment = (yaml.safe_load(p.read_text()) for p in (DEFAULTS, config))
    model = experiment["model"]
    # The hand loop mirrors these keys only; anything else would make the comparison inexact.
    extra = set(model.get("init_args", {})) - {"backbone", "optimizer", "schedule", "warmup_fraction"}
    if model["class_path"] != "models.Classifier" or extra:
        sys.exit(f"{config.name}: the hand loop mirrors models.Classifier without {sorted(extra)}")
    return {
        "epochs": experiment.get("trainer", {}).get("max_epochs", defaults["trainer"]["max_epochs"]),
        "data": {**defaults["data"], **experiment.get("data", {})},  # e.g. only init_args: {view: sequence}
        "model": model["init_args"],
    }


def hand(cfg: dict, seed: int, epochs: int) -> tuple[float, int]:
    torch.manual_seed(seed)
    data = build(cfg["data"])
    data.setup("fit")
    model = nn.Sequential(backbone := build(cfg["model"]["backbone"]), nn.Linear(backbone.out_features, data.num_classes))
    materialize(model, data.example_input)  # sizes the lazy first layer, as Task.setup does
    collate = lambda ds: whole_batch if isinstance(ds, TensorSamples) else None  # noqa: E731 - as base.py's loaders
    gc.collect()
    start = time.perf_counter()
    # Inside the span, like configure_optimizers and the loaders are inside trainer.fit.
    train = DataLoader(data.train_dataset, batch_size=data.batch_size, shuffle=True, collate_fn=collate(data.train_dataset))
    val = DataLoader(data.val_dataset, batch_size=data.batch_size, collate_fn=collate(data.val_dataset))
    optimizer = build(cfg["model"]["optimizer"], call=False)
    schedule, warmup = cfg["model"].get("schedule", "constant"), cfg["model"].get("warmup_fraction")
    out = configure_optimization(model, optimizer, schedule, epochs * len(train), warmup)
    opt, scheduler = (out["optimizer"], out["lr_scheduler"]["scheduler"]) if isinstance(out, dict) else (out, None)
    steps = 0
    for _ in range(epochs):
        model.train()
        for batch in train:
            loss = F.cross_entropy(model(batch["input"]), batch["target"])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if scheduler is not None:
                scheduler.step()
            steps += 1
        model.eval()
        total, correct, count = 0.0, 0, 0  # summed, not printed: the work is what litlab's validation does too
        with torch.no_grad():
            for batch in val:
                x, y = batch["input"], batch["target"]
                logits = model(x)
                total += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(-1) == y).sum().item()
                count += len(y)
    return time.perf_counter() - start, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["cnn", "mlp"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None, help="default: the experiment's YAML")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="litlab-overhead-"))
    sys.argv = sys.argv[:1]  # LightningCLI reads args= only
    for name in ("lightning.pytorch", "lightning.fabric"):  # per-run banners, not results
        logging.getLogger(name).setLevel(logging.WARNING)
    configs = {e: DEFAULTS.parent / "digits" / f"{e}.yaml" for e in args.experiments}
    cfgs = {e: load_config(c) for e, c in configs.items()}
    for experiment in args.experiments:
        # One untimed epoch each: first-call costs (lazy imports, allocator growth) are not per-step overhead.
        litlab(configs[experiment], 0, 1), hand(cfgs[experiment], 0, 1)
    results = {e: [] for e in args.experiments}  # (litlab s, hand s, steps) per round
    for round_ in range(args.rounds):
        for experiment in args.experiments:
            epochs = args.epochs or cfgs[experiment]["epochs"]
            sides = {
                "litlab": lambda: litlab(configs[experiment], round_, epochs),
                "hand": lambda: hand(cfgs[experiment], round_, epochs),
            }
            # Alternate the order, so neither side always runs on a warmer cache or a quieter machine.
            order = ["litlab", "hand"] if round_ % 2 == 0 else ["hand", "litlab"]
            timed = {side: sides[side]() for side in order}
            (lit_s, lit_steps), (hand_s, hand_steps) = timed["litlab"], timed["hand"]
            assert lit_steps == hand_steps, f"{experiment}: litlab took {lit_steps} steps, the hand loop {hand_steps}"
            results[experiment].append((lit_s, hand_s, lit_steps))
            print(f"round {round_} {experiment}: litlab {lit_s:.2f} s, hand {hand_s:.2f} s, "
                  f"ratio {lit_s / hand_s:.2f}", file=sys.stderr, flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.rounds} rounds, "
          f"code from {Path(models.__file__).parents[1]}\n")
    print("| experiment | steps | litlab fit loop s | hand loop s | ratio min / median / max | extra ms per step |")
    print("|---|---|---|---|---|---|")
    for experiment, rows in results.items():
        ratios = [lit / h for lit, h, _ in rows]
        extra = [1000 * (lit - h) / steps for lit, h, steps in rows]
        print(f"| digits/{experiment} | {rows[0][2]} | {statistics.median(r[0] for r in rows):.2f} "
              f"| {statistics.median(r[1] for r in rows):.2f} "
              f"| {min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} "
              f"| {statistics.median(extra):.1f} |")


if __name__ == "__main__":
    main()
