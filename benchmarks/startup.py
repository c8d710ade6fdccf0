"""Start-up time of litlab's commands against importing Lightning alone, with the same interpreter.

    .venv/bin/python benchmarks/startup.py              # or: --rounds 9
    .venv/bin/python benchmarks/startup.py --against /tmp/old-checkout   # and another checkout's, side by side

Each round runs every command once in a fresh process, in an order that rotates by round, so
a noisy moment of a shared machine falls on each side in turn: `python -c "import
lightning.pytorch"` (the floor: what any Lightning CLI pays), `litlab --help`, `litlab fit --help`,
a mistyped flag and a config mistake, each run as the console script runs it, with this
checkout first on the path. One thread on every side. Prints a Markdown table of each
command's seconds (min / median / max over rounds) and of its ratio to the floor of the same
round: what litlab adds on top of Lightning is the ratio less one. With `--against DIR`, the
litlab commands of that checkout (another commit, say) run in the same rounds, imported from DIR.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CNN = str(ROOT / "experiments" / "digits" / "cnn.yaml")

ARGUMENTS = {
    "litlab --help": (["--help"], 0),
    "litlab fit --help": (["fit", "--help"], 0),
    "mistyped flag": (["fit", "--config", CNN, "--trainer.max_epochz=3"], 2),
    "config mistake": (["fit", "--config", CNN, "--model.backbone.class_path=models.backbones.Nope"], 2),
}
FLOOR = "import lightning.pytorch"
# The console script's own code, for a checkout that is not the installed one.
AS_LITLAB = "import sys; sys.argv[0] = 'litlab'; from experiments.cli import main; main()"


def commands(against: Path | None) -> dict[str, tuple[list[str], int, Path | None]]:
    table = {FLOOR: ([sys.executable, "-c", "import lightning.pytorch"], 0, None)}
    for name, (arguments, code) in ARGUMENTS.items():
        # The console script's code, imported from this checkout as from the other: an editable
        # install's import hook would otherwise slow one side alone.
        table[name] = ([sys.executable, "-c", AS_LITLAB, *arguments], code, ROOT)
        if against is not None:
            table[f"{name} ({against.name})"] = ([sys.executable, "-c", AS_LITLAB, *arguments], code, against)
    return table


def run(command: list[str], expected: int, checkout: Path | None) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)  # searched before the editable install's finder
    start = time.perf_counter()
    done = subprocess.run(command, cwd=checkout or ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != expected:
        raise SystemExit(f"{' '.join(command)} exited {done.returncode}, not {expected}:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--against", type=Path, help="another checkout of litlab, to run side by side")
    args = parser.parse_args()
    table = commands(args.against.resolve() if args.against else None)
    names = list(table)
    times: dict[str, list[float]] = {name: [] for name in names}
    run(*table[FLOOR])  # warm the file cache once, outside the rounds
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            times[name].append(run(*table[name]))
        print(f"round {r + 1}: " + ", ".join(f"{n} {times[n][-1]:.2f} s" for n in names), file=sys.stderr)

    def spread(values: list[float], unit: str) -> str:
        return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}{unit}"

    print(f"\n{args.rounds} rounds, seconds and ratio to `{FLOOR}` in the same round (min / median / max)\n")
    print("| command | seconds | ratio |")
    print("|---|---|---|")
    for name in names:
        ratios = [t / f for t, f in zip(times[name], times[FLOOR])]
        print(f"| {name} | {spread(times[name], '')} | {spread(ratios, 'x')} |")


if __name__ == "__main__":
    main()
