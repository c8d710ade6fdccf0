"""bf16-mixed against 32-bit training on this CPU, per recipe, side by side in one process.

    .venv/bin/python benchmarks/precision.py            # or: --rounds 5 --recipes digits/cnn text/gpt_small

Each round fits every recipe twice through `litlab fit` in this process, `--trainer.precision=32-true`
and `bf16-mixed`, the order alternating by round, on one thread, with that round's seed: the digits
recipes for 10 epochs, `gpt_small.yaml` narrowed as the language-model test narrows it (width 64, 2
blocks, 64-byte windows) for 150 steps. The time is `trainer.fit` alone (set-up, training, the
validations, checkpoints; `benchmarks/harness.py`); the metric is the last validation's (accuracy, or bits per byte). Prints a
Markdown table: medians over rounds of each precision's time and metric, and the bf16 / 32-bit time
ratio with min / median / max (below 1: bf16 is faster).
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import argparse
import statistics
import sys

import torch
from harness import NARROW_GPT, fit_recipe, last_validation, one_thread_in_scratch


RECIPES = {
    "digits/mlp": ["--trainer.max_epochs=10"],
    "digits/cnn": ["--trainer.max_epochs=10"],
    "digits/transformer": ["--trainer.max_epochs=10"],
    "text/gpt_small": [*NARROW_GPT, "--trainer.max_steps=150", "--trainer.val_check_interval=150",
                       "--trainer.limit_val_batches=20"],
}


def fit(recipe: str, precision: str, seed: int) -> tuple[float, str, float]:
    cli = fit_recipe(recipe, [*RECIPES[recipe], f"--trainer.precision={precision}"], seed)
    return cli.seconds, *last_validation(cli)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args(argv)
    one_thread_in_scratch("litlab-precision-")
    precisions = ["32-true", "bf16-mixed"]
    results = {(r, p): [] for r in args.recipes for p in precisions}
    for recipe in args.recipes:  # untimed: first-call costs are not the precision's
        fit(recipe, "bf16-mixed", 0)
    for round_ in range(args.rounds):
        for recipe in args.recipes:
            for precision in precisions if round_ % 2 == 0 else precisions[::-1]:
                results[(recipe, precision)].append(fit(recipe, precision, round_))
            print(f"round {round_} {recipe}: " + ", ".join(
                f"{p} {results[(recipe, p)][-1][0]:.2f} s {results[(recipe, p)][-1][2]:.4f}" for p in precisions),
                file=sys.stderr, flush=True)
    print(f"\ntorch {torch.__version__}, one thread, {args.rounds} rounds, seeds 0 to {args.rounds - 1}\n")
    print("| recipe | 32-bit fit s | bf16-mixed fit s | bf16 / 32-bit time (min / median / max) | metric | 32-bit | bf16 |")
    print("|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        full, half = results[(recipe, "32-true")], results[(recipe, "bf16-mixed")]
        ratios = [h[0] / f[0] for f, h in zip(full, half)]
        print(f"| {recipe} | {statistics.median(r[0] for r in full):.2f} | {statistics.median(r[0] for r in half):.2f} | "
              f"{min(ratios):.2f} / {statistics.median(ratios):.2f} / {max(ratios):.2f} | {full[0][1]} | "
              f"{statistics.median(r[2] for r in full):.4f} | {statistics.median(r[2] for r in half):.4f} |")


if __name__ == "__main__":
    main()
