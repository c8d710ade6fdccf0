"""`compile: true` against eager training on this CPU, per recipe, side by side in one process.

    .venv/bin/python benchmarks/compile.py              # or: --rounds 3 --recipes digits/cnn text/gpt_small

Each round fits every recipe twice through `litlab fit` in this process, with
`--model.init_args.compile=false` and `=true`, the order alternating by round, one thread, seed = the
round: the digits recipes for 5 epochs, `gpt_small.yaml` narrowed as the language-model test narrows
it (width 64, 2 blocks, 64-byte windows) for 3 epochs of 60 steps. Two times per fit: the whole
`trainer.fit` (set-up, compilation, training, validations, checkpoints: compile time included) and the
last epoch's training alone (`speed.csv`'s train_seconds: compile time excluded, compilation being
done by then). The first compiled fit of a recipe compiles from nothing (the run has a compile cache of
its own); later ones reuse what torch cached in this process and on disk, as later runs of a recipe
on one machine do. Prints a Markdown table: the compiled / eager ratio of the whole fit for the first
compile and for the cached ones (median), of the last epoch (min / median / max over rounds; below 1:
compiling pays), and the last validation metric of each.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import tempfile

# A compile cache of this run's own: the first compiled fit of each recipe compiles from nothing.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="litlab-inductor-")

import argparse
import csv
import statistics
import sys
from pathlib import Path

import torch
from harness import NARROW_GPT, fit_recipe, last_validation, one_thread_in_scratch


RECIPES = {
    "digits/mlp": ["--trainer.max_epochs=5"],
    "digits/cnn": ["--trainer.max_epochs=5"],
    "digits/transformer": ["--trainer.max_epochs=5"],
    "text/gpt_small": [*NARROW_GPT, "--trainer.max_epochs=3", "--trainer.limit_train_batches=60",
                       "--trainer.limit_val_batches=10"],
}


def fit(recipe: str, compile: bool, seed: int) -> tuple[float, float, str, float]:
    cli = fit_recipe(recipe, [*RECIPES[recipe], f"--model.init_args.compile={str(compile).lower()}"], seed)
    last = list(csv.DictReader((Path(cli.trainer.log_dir) / "speed.csv").open()))[-1]
    return cli.seconds, float(last["train_seconds"]), *last_validation(cli)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args(argv)
    one_thread_in_scratch("litlab-compile-")
    results = {(r, c): [] for r in args.recipes for c in (False, True)}
    for recipe in args.recipes:  # untimed, eager: first-call costs are neither side's
        fit(recipe, False, 0)
    for round_ in range(args.rounds):
        for recipe in args.recipes:
            for compile in (False, True) if round_ % 2 == 0 else (True, False):
                results[(recipe, compile)].append(fit(recipe, compile, round_))
            print(f"round {round_} {recipe}: " + ", ".join(
                f"{'compiled' if c else 'eager'} {results[(recipe, c)][-1][0]:.1f} s fit, "
                f"{results[(recipe, c)][-1][1]:.2f} s last epoch" for c in (False, True)), file=sys.stderr, flush=True)
    print(f"\ntorch {torch.__version__}, one thread, {args.rounds} rounds\n")
    print("| recipe | eager fit s | compiled fit s: first, then cached | compiled / eager fit: first, cached | "
          "eager last epoch s | compiled last epoch s | compiled / eager last epoch (min / median / max) | metric | "
          "eager | compiled |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for recipe in args.recipes:
        eager, compiled = results[(recipe, False)], results[(recipe, True)]
        whole = [c[0] / e[0] for e, c in zip(eager, compiled)]
        steady = [c[1] / e[1] for e, c in zip(eager, compiled)]

        def med(rows, i):
            return statistics.median(r[i] for r in rows)

        cached = statistics.median(whole[1:]) if len(whole) > 1 else float("nan")
        print(f"| {recipe} | {med(eager, 0):.1f} | {compiled[0][0]:.1f}, {med(compiled[1:] or compiled, 0):.1f} | "
              f"{whole[0]:.2f}, {cached:.2f} | {med(eager, 1):.2f} | {med(compiled, 1):.2f} | "
              f"{min(steady):.2f} / {statistics.median(steady):.2f} / {max(steady):.2f} | {eager[0][2]} | "
              f"{med(eager, 3):.4f} | {med(compiled, 3):.4f} |")


if __name__ == "__main__":
    main()
