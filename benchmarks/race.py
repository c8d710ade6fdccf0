"""Time to target, side by side in one process: the digits to 99% (litlab against an airbench-style hand
loop of the same network and against scikit-learn's SVC), and the embedded corpus to below zlib's and
xz's held-out bits per byte (litlab against a nanoGPT-style bare loop of the same model).

    .venv/bin/python benchmarks/race.py                 # or: --rounds 5 --epochs 4 --target 0.99
    .venv/bin/python benchmarks/race.py --race text     # or: --rounds 3 --text-epochs 12

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

The text race: `experiments/text/gpt_small.yaml` narrowed as the language-model test narrows it
(width 64, 2 blocks, 64-byte windows, learning rate 0.012) for `--text-epochs` epochs. The targets
are zlib -9's and xz -9e's bits per byte on the validation split's text. Both sides measure the
validation split's bits per byte after every epoch; the clock counts training alone (litlab's
`speed.csv` train_seconds, which leave out validation and checkpoints; the bare loop's epochs,
timed without its evaluation), summed up to the first epoch under each target. litlab runs twice:
as gpt_small.yaml (AdamW, as the bare loop), and as `gpt_muon.yaml`, its fastest recipe (Muon for the
blocks' matrices, AdamW at the same rate for the rest), narrowed the same way. The bare loop:
the same model, parameter groups, AdamW, warmup and cosine schedule, clipping, batches of the same
windows in a seeded shuffled order, tied head and cross entropy, nothing else. Rounds rotate
which side goes first; the table gives each side's time to each target (median, min / max) and
litlab's over the bare loop's.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import argparse
import csv
import lzma
import math
import zlib
import gc
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

from torch.utils.data import DataLoader

from datamodules import DigitsDataModule
from datamodules.text import TextDataModule
from harness import NARROW_GPT, TimedCLI, fit, one_thread_in_scratch

from experiments.cli import DEFAULTS
from models.backbones import CNN, Transformer
from models.lazy import materialize
from models.optim import configure_optimization

RECIPE = DEFAULTS.parent / "digits" / "cnn.yaml"
GPT = DEFAULTS.parent / "text" / "gpt_small.yaml"
GPT_MUON = DEFAULTS.parent / "text" / "gpt_muon.yaml"
# What the bare loop mirrors of harness.NARROW_GPT and of the recipe.
NARROW = {"d_model": 64, "depth": 2, "heads": 4, "block": 64, "lr": 0.012, "betas": (0.9, 0.95), "decay": 0.1,
          "warmup": 0.05, "clip": 1.0, "batch": 32}
CHANNELS, LR, WEIGHT_DECAY, BATCH = [32, 64], 0.003, 0.01, 64  # cnn.yaml's, and defaults.yaml's batch


class RaceCLI(TimedCLI):
    """Timed from the start of its fit to the end of the closing test of the best checkpoint."""

    def after_fit(self) -> None:
        super().after_fit()
        self.seconds = time.perf_counter() - self.start


def litlab(seed: int, epochs: int) -> tuple[float, float, int]:
    cli = fit(["--config", str(RECIPE), f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}",
               f"--trainer.check_val_every_n_epoch={epochs}"], RaceCLI)
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


def text_litlab(seed: int, epochs: int, muon: bool = False) -> list[tuple[float, float]]:
    """(training seconds, validation bits per byte) after each epoch of litlab's fit: gpt_small.yaml, or
    with `muon` gpt_muon.yaml (Muon for the blocks' matrices, its AdamW groups at the same rate)."""
    rate = f"--model.optimizer.init_args.{'adamw_lr' if muon else 'lr'}={NARROW['lr']}"
    cli = fit(["--config", str(GPT_MUON if muon else GPT), f"--seed_everything={seed}", f"--trainer.max_epochs={epochs}",
               *NARROW_GPT, rate])
    run = Path(cli.trainer.log_dir)
    seconds = [float(r["train_seconds"]) for r in csv.DictReader((run / "speed.csv").open())]
    bpb = [float(r["val/bpb"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("val/bpb")]
    return list(zip(seconds, bpb))


def text_bare(seed: int, epochs: int, data: TextDataModule) -> list[tuple[float, float]]:
    """The same, by a nanoGPT-style loop: (seconds of each epoch's training, validation bits per byte after it)."""
    n = NARROW
    torch.manual_seed(seed)
    backbone = Transformer(input="tokens", vocab_size=data.vocab_size, causal=True, d_model=n["d_model"],
                           depth=n["depth"], heads=n["heads"], max_len=n["block"])
    head = nn.Linear(backbone.out_features, data.vocab_size, bias=False)
    head.weight = backbone.embed.weight  # tied, as in LanguageModel and nanoGPT
    decay = {False: [], True: []}  # LanguageModel's groups: no decay on biases, norms and embeddings
    for name, p in backbone.named_parameters():
        decay[p.ndim >= 2 and not name.startswith(("embed.", "pos."))].append(p)
    train = DataLoader(data.train_dataset, batch_size=n["batch"], shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(data.val_dataset, batch_size=n["batch"])
    optimizer = partial(torch.optim.AdamW, lr=n["lr"], betas=n["betas"], weight_decay=n["decay"])
    opt = optimizer([{"params": decay[False], "weight_decay": 0.0}, {"params": decay[True]}])
    ramp = int(n["warmup"] * epochs * len(train))
    schedule = torch.optim.lr_scheduler.SequentialLR(opt, [
        torch.optim.lr_scheduler.LinearLR(opt, 1.0 / max(ramp, 1), total_iters=max(ramp, 1)),
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs * len(train) - ramp, 1))], milestones=[ramp])
    params = [p for g in opt.param_groups for p in g["params"]]
    out = []
    for _ in range(epochs):
        backbone.train()
        start = time.perf_counter()
        for batch in train:
            logits = head(backbone.forward_features(batch["input"]))
            loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, n["clip"])
            opt.step()
            schedule.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        backbone.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in val:
                logits = head(backbone.forward_features(batch["input"]))
                target = batch["target"].flatten()
                total += F.cross_entropy(logits.flatten(0, 1), target, ignore_index=-100, reduction="sum").item()
                count += int((target != -100).sum())
        out.append((seconds, total / count / math.log(2) * data.tokens_per_byte["val"]))
    return out


def time_to(history: list[tuple[float, float]], target: float) -> float | None:
    """Training seconds summed up to the first epoch under `target`; None if none was."""
    spent = 0.0
    for seconds, bpb in history:
        spent += seconds
        if bpb < target:
            return spent
    return None


def text_race(rounds: int, epochs: int) -> None:
    with tempfile.TemporaryDirectory(prefix="litlab-race-text-") as cache:
        data = TextDataModule(objective="causal", block_size=NARROW["block"], batch_size=NARROW["batch"],
                              cache_dir=cache)
        data.setup("fit")
        path, bounds = data.cached_corpus()
        start, end = bounds["val"]
        held = path.read_bytes()[start:end]  # bytes: one token a byte
        targets = {"zlib -9": 8 * len(zlib.compress(held, 9)) / len(held),
                    "xz -9e": 8 * len(lzma.compress(held, preset=9 | lzma.PRESET_EXTREME)) / len(held)}
        sides = {"litlab": lambda seed: text_litlab(seed, epochs), "litlab, Muon": lambda seed: text_litlab(seed, epochs, True),
                 "bare loop": lambda seed: text_bare(seed, epochs, data)}
        results = {side: [] for side in sides}
        for round_ in range(rounds):
            order = list(sides)[round_ % 3:] + list(sides)[:round_ % 3]  # each side first in turn
            for side in order:
                results[side].append(sides[side](round_))
            print(f"round {round_}: " + "; ".join(f"{side} bpb " + " ".join(f"{b:.3f}" for _, b in rows[-1])
                                                 for side, rows in results.items()), file=sys.stderr, flush=True)
    print(f"\nthe embedded corpus, validation split ({len(held):,} bytes): " + ", ".join(
        f"{name} {bpb:.3f} bits per byte" for name, bpb in targets.items())
        + f"; gpt_small.yaml at width {NARROW['d_model']}, {NARROW['depth']} blocks, {NARROW['block']}-byte windows, "
          f"{epochs} epochs; {rounds} rounds, one thread\n")
    print("| side | best bpb (median) | " + " | ".join(f"seconds to below {name} (median, min / max; reached)"
                                                     for name in targets) + " |")
    print("|---|---|" + "---|" * len(targets))
    for side, rows in results.items():
        cells = []
        for target in targets.values():
            times = [t for t in (time_to(r, target) for r in rows) if t is not None]
            cells.append(f"{statistics.median(times):.1f} ({min(times):.1f} / {max(times):.1f}); {len(times)} of {len(rows)}"
                         if times else f"not reached; 0 of {len(rows)}")
        best = statistics.median(min(b for _, b in r) for r in rows)
        print(f"| {side} | {best:.3f} | " + " | ".join(cells) + " |")
    for side in ("litlab", "litlab, Muon"):
        for name, target in targets.items():
            pairs = [(time_to(a, target), time_to(b, target)) for a, b in zip(results[side], results["bare loop"])]
            ratios = [a / b for a, b in pairs if a is not None and b is not None]
            if ratios:
                print(f"\n{side} / bare loop to below {name}: {min(ratios):.2f} / {statistics.median(ratios):.2f} / "
                      f"{max(ratios):.2f} (min / median / max over {len(ratios)} rounds both reached it)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4, help="the fewest with which both nets reached 99%% on 5 seeds")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--race", choices=["digits", "text", "both"], default="digits")
    parser.add_argument("--text-epochs", type=int, default=12)
    args = parser.parse_args(argv)
    one_thread_in_scratch("litlab-race-")
    if args.race in ("text", "both"):
        text_race(args.rounds if args.race == "text" else 3, args.text_epochs)
        if args.race == "text":
            return
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
