"""Time to target on the digits, side by side in one process: litlab against an airbench-style hand loop
of the same network and against scikit-learn's SVC.

    .venv/bin/python benchmarks/race.py                 # or: --rounds 5 --epochs 4 --target 0.99

The target is a test accuracy of at least `--target` (99.0%) on the digits' 360 test images.

- **litlab**: `experiments/digits/cnn.yaml` (the CNN, AdamW, cosine schedule), `--epochs` epochs,
  validating once at the end (`check_val_every_n_epoch` = epochs), as `litlab fit` runs it in this
  process: timed from the fit's start to the end of its closing test of the best checkpoint
  (checkpoints written, metrics logged); parsing the config and building the model are not timed.
- **hand loop**: the same network, optimizer, parameter groups, schedule, batch size and epochs,
  airbench-style: the training and test splits held as tensors, each epoch's order one
  `torch.randperm`, batches sliced from the tensors (no DataLoader), no validation, no checkpoint;
  timed from the tensors in hand to the test accuracy.
- **SVC**: scikit-learn's `SVC(C=10)` (RBF kernel; C=10 and 5 tied best of 1, 5 and 10 and gamma
  0.256 / 0.5 on the validation split) on the same training images' raw pixels, flattened, fitted
  and scored on the same test images.

Each round runs the three in a rotating order with that round's seed, on one thread. Prints each
round, then a Markdown table: the time and test accuracy of each (median, min and max over rounds),
how many rounds reached the target, and litlab's time over each reference's, min / median / max.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import argparse
import contextlib
import gc
import io
import logging
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F
from torch import nn

from datamodules import DigitsDataModule
from experiments.cli import DEFAULTS, LitlabCLI
from models.backbones import CNN
from models.lazy import materialize
from models.optim import configure_optimization

RECIPE = DEFAULTS.parent / "digits" / "cnn.yaml"
CHANNELS, LR, WEIGHT_DECAY, BATCH = [32, 64], 0.003, 0.01, 64  # cnn.yaml's, and defaults.yaml's batch


class RaceCLI(LitlabCLI):
    """LitlabCLI timed from the start of its fit to the end of the closing test."""

    def before_fit(self) -> None:
        gc.collect()
        self.start = time.perf_counter()

    def after_fit(self) -> None:
        super().after_fit()  # the closing test of the best checkpoint
        self.seconds = time.perf_counter() - self.start


def litlab(seed: int, epochs: int) -> tuple[float, float, int]:
    args = ["fit", "--config", str(RECIPE), f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}",
            f"--trainer.check_val_every_n_epoch={epochs}", "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false"]
    with contextlib.redirect_stdout(io.StringIO()):
        cli = RaceCLI(args=args)
    return cli.seconds, float(cli.trainer.callback_metrics["test/acc"]), cli.trainer.global_step


def tensors(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's inputs and targets as two tensors, as its loader serves them (normalised)."""
    batch = split.__getitems__(list(range(len(split))))
    return batch["input"], batch["target"]


def hand(seed: int, epochs: int, data) -> tuple[float, float, int]:
    (x, y), (x_test, y_test) = data
    torch.manual_seed(seed)
    model = nn.Sequential(backbone := CNN(channels=CHANNELS), nn.Linear(backbone.out_features, 10))
    materialize(model, x[:2])
    gc.collect()
    start = time.perf_counter()
    n, per_epoch = len(y), -(-len(y) // BATCH)
    optimizer = partial(torch.optim.AdamW, lr=LR, weight_decay=WEIGHT_DECAY)
    out = configure_optimization(model, optimizer, "cosine", epochs * per_epoch, None)
    opt, schedule = out["optimizer"], out["lr_scheduler"]["scheduler"]
    order = torch.Generator().manual_seed(seed)
    steps = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(0, n, BATCH):
            index = perm[i:i + BATCH]
            loss = F.cross_entropy(model(x[index]), y[index])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            schedule.step()
            steps += 1
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(-1) == y_test).float().mean().item()
    return time.perf_counter() - start, accuracy, steps


def svc(seed: int, data) -> tuple[float, float, int]:
    from sklearn.svm import SVC

    (x, y), (x_test, y_test) = data
    start = time.perf_counter()
    model = SVC(C=10).fit(x.flatten(1).numpy(), y.numpy())  # deterministic: the seed changes nothing
    accuracy = float(model.score(x_test.flatten(1).numpy(), y_test.numpy()))
    return time.perf_counter() - start, accuracy, 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="the fewest with which both nets reached 99%% on 5 seeds")
    parser.add_argument("--target", type=float, default=0.99)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="litlab-race-"))
    sys.argv = sys.argv[:1]
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    digits = DigitsDataModule(batch_size=BATCH)
    digits.setup("fit")
    data = (tensors(digits.train_dataset), tensors(digits.test_dataset))
    pixels = DigitsDataModule(normalize=False)  # the SVC reads the raw [0, 1] pixels, as scikit-learn's examples do
    pixels.setup("fit")
    raw = (tensors(pixels.train_dataset), tensors(pixels.test_dataset))
    sides = {"litlab": lambda seed: litlab(seed, args.epochs), "hand loop": lambda seed: hand(seed, args.epochs, data),
             "SVC": lambda seed: svc(seed, raw)}
    litlab(0, 1), hand(0, 1, data), svc(0, raw)  # first-call costs (imports, allocator growth) are not the race's
    results = {side: [] for side in sides}
    names = list(sides)
    for round_ in range(args.rounds):
        order = names[round_ % 3:] + names[:round_ % 3]
        for side in order:
            results[side].append(sides[side](round_))
        steps = {results[s][-1][2] for s in ("litlab", "hand loop")}
        assert len(steps) == 1, f"litlab and the hand loop took different numbers of steps: {steps}"
        print(f"round {round_}: " + ", ".join(f"{s} {results[s][-1][0]:.2f} s {100 * results[s][-1][1]:.1f}%"
                                              for s in names), file=sys.stderr, flush=True)
    print(f"\ndigits to {100 * args.target:.1f}% test accuracy; CNN {args.epochs} epochs ({results['litlab'][0][2]} "
          f"steps of {BATCH}); {args.rounds} rounds, seeds 0 to {args.rounds - 1}; torch {torch.__version__}, one thread\n")
    print("| side | time s (median, min / max) | test acc % (median, min / max) | reached target | litlab / this "
          "(min / median / max) |\n|---|---|---|---|---|")
    for side, rows in results.items():
        times, accs = [r[0] for r in rows], [100 * r[1] for r in rows]
        ratios = [lit[0] / own[0] for lit, own in zip(results["litlab"], rows)]
        ratio = "" if side == "litlab" else f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f}"
        print(f"| {side} | {statistics.median(times):.3f} ({min(times):.3f} / {max(times):.3f}) | "
              f"{statistics.median(accs):.1f} ({min(accs):.1f} / {max(accs):.1f}) | "
              f"{sum(r[1] >= args.target for r in rows)} of {len(rows)} | {ratio} |")


if __name__ == "__main__":
    main()
