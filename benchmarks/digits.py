"""Test accuracy and fit time of every digits experiment, over several seeds.

    make bench                      # or: .venv/bin/python benchmarks/digits.py --seeds 0 1 2

Prints a Markdown table for the README. Time is the wall-clock of one in-process
`litlab fit` (training with validation, then the test of the best checkpoint; Python
start-up excluded), on this machine's CPU.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

from experiments.cli import DEFAULTS, LitlabCLI

EXPERIMENTS = ["cnn", "cnn_augment", "mlp", "rnn", "lstm", "gru", "transformer"]


def run(experiment: str, seed: int) -> tuple[float, float]:
    start = time.perf_counter()
    cli = LitlabCLI(
        args=[
            "fit",
            "--config", str(DEFAULTS.parent / "digits" / f"{experiment}.yaml"),
            f"--seed_everything={seed}",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
        ]
    )
    return float(cli.trainer.callback_metrics["test/acc"]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    args = parser.parse_args()
    os.environ["WANDB_MODE"] = "disabled"
    os.chdir(tempfile.mkdtemp(prefix="litlab-bench-"))
    sys.argv = sys.argv[:1]  # LightningCLI reads args= only
    rows = []
    for experiment in args.experiments:
        results = [run(experiment, seed) for seed in args.seeds]
        accs = [100 * acc for acc, _ in results]
        times = [t for _, t in results]
        rows.append(
            f"| digits/{experiment} | {statistics.mean(accs):.1f} ± {statistics.pstdev(accs):.1f} "
            f"| {min(accs):.1f} | {statistics.mean(times):.1f} s |"
        )
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, seeds {args.seeds}\n")
    print("| experiment | test acc % (mean ± sd) | worst seed % | fit + test time |")
    print("|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
