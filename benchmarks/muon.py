"""Muon against AdamW at the same number of steps, per seed, side by side in one process.

    .venv/bin/python benchmarks/muon.py                  # or: --seeds 0 1 2 --pairs digits text-narrow

Each pair is a recipe trained by AdamW and the same recipe trained by `models.optim.Muon` (Muon for the
hidden matrices and kernels, AdamW for the rest), both through `litlab fit` on one thread, each seed
running both, the order alternating by seed. The score is the closing test's, on the best checkpoint
by validation loss: accuracy for digits, bits per byte for text. The time is `trainer.fit` alone.

- digits: `digits/cnn.yaml` against `digits/cnn_muon.yaml`, 20 epochs (the recipes as they are);
- digits-short: the same for 3 epochs, where both are still learning;
- text: `text/gpt_small.yaml` against `text/gpt_muon.yaml`, 12 epochs (about 3 minutes a fit here);
- text-narrow: both narrowed as the language-model test narrows gpt_small (width 64, 2 blocks, 64-byte
  windows, 6 epochs), AdamW at the test's learning rate (0.012), Muon's AdamW groups at the same.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import argparse
import statistics
import sys

import torch
from harness import NARROW_GPT, fit_recipe, one_thread_in_scratch


NARROW = [*NARROW_GPT, "--trainer.max_epochs=6"]
PAIRS = {  # name: (metric, (AdamW recipe, its flags), (Muon recipe, its flags))
    "digits": ("test/acc", ("digits/cnn", []), ("digits/cnn_muon", [])),
    "digits-short": ("test/acc", ("digits/cnn", ["--trainer.max_epochs=3"]),
                     ("digits/cnn_muon", ["--trainer.max_epochs=3"])),
    "text": ("test/bpb", ("text/gpt_small", ["--model.sample_prompts=null"]),
             ("text/gpt_muon", ["--model.sample_prompts=null"])),
    "text-narrow": ("test/bpb", ("text/gpt_small", [*NARROW, "--model.optimizer.init_args.lr=0.012"]),
                    ("text/gpt_muon", [*NARROW, "--model.optimizer.init_args.adamw_lr=0.012"])),
}


def run(recipe: str, flags: list[str], seed: int, metric: str) -> tuple[float, float, float, int]:
    cli = fit_recipe(recipe, flags, seed)
    tested = cli.trainer.callback_metrics
    return float(tested[metric]), float(tested["test/loss"]), cli.seconds, cli.trainer.global_step


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pairs", nargs="+", default=["digits", "text-narrow", "text"], choices=list(PAIRS))
    args = parser.parse_args(argv)
    one_thread_in_scratch("litlab-muon-")
    rows = []
    for name in args.pairs:
        metric, adamw, muon = PAIRS[name]
        scores = {"AdamW": [], "Muon": []}
        losses = {"AdamW": [], "Muon": []}
        for i, seed in enumerate(args.seeds):
            sides = [("AdamW", adamw), ("Muon", muon)]
            for side, (recipe, flags) in sides if i % 2 == 0 else sides[::-1]:
                score, loss, seconds, steps = run(recipe, flags, seed, metric)
                scores[side].append(score)
                losses[side].append(loss)
                rows.append((name, side, seed, steps, score, loss, seconds))
                print(f"{name} {side} seed {seed}: {metric} {score:.4f}, {steps} steps, {seconds:.1f} s",
                      file=sys.stderr, flush=True)
        for side, values in scores.items():
            rows.append((name, side, "mean", "", statistics.mean(values), statistics.mean(losses[side]), None))
    print(f"\ntorch {torch.__version__}, one thread, seeds {' '.join(map(str, args.seeds))}\n")
    print("| pair | optimizer | seed | steps | test metric | test loss | fit s |\n|---|---|---|---|---|---|---|")
    for name, side, seed, steps, score, loss, seconds in rows:
        metric = PAIRS[name][0]
        shown = f"{score:.2%}" if metric == "test/acc" else f"{score:.3f} bpb"
        print(f"| {name} | {side} | {seed} | {steps} | {shown} | {loss:.4f} | {'' if seconds is None else f'{seconds:.1f}'} |")


if __name__ == "__main__":
    main()
