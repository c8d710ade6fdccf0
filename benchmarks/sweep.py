"""What a sweep finds and what its pruner saves: the shipped digits-MLP sweep, with the median pruner
and without, against the shipped recipe.

    .venv/bin/python benchmarks/sweep.py                    # or --trials 12 for a shorter run

Runs `litlab sweep --config experiments/digits/mlp.yaml --sweep experiments/sweeps/digits_mlp.yaml`
twice in fresh folders, once as shipped (median pruner) and once with `pruner: none`, and prints a
Markdown table: wall time (checks and trials, Python start-up excluded), epochs trained, trials
pruned, and the best trial's values, mean val/loss and test accuracy (mean ± sd and 95% interval over
its seeds). Then the shipped experiments/digits/mlp.yaml trained in full on the same seeds, and the
best trial's values trained as that recipe (its 20 epochs, `best.yaml` less the trials' epoch cap).
Everything runs in processes forked from this one, which itself never computes with torch.
"""

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import yaml

from experiments.cli import DEFAULTS
from experiments import sweep_trial
from experiments.report import spread
from experiments.sweep import main as sweep

ROOT = DEFAULTS.parent
MLP = ROOT / "digits" / "mlp.yaml"
SHIPPED = ROOT / "sweeps" / "digits_mlp.yaml"


def epochs_trained(folder: Path) -> int:
    return sum(len({row["epoch"] for row in csv.DictReader(path.open()) if row.get("val/loss")})
               for path in folder.glob("trial_*/**/metrics.csv"))


def run_sweep(pruner: str, trials: int) -> dict:
    spec = yaml.safe_load(SHIPPED.read_text())
    spec.update(name=f"bench-{pruner}", trials=trials)
    if pruner == "none":
        spec["pruner"] = "none"
    path = Path(f"{spec['name']}.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    start = time.perf_counter()
    sweep(["--config", str(MLP), "--sweep", str(path)])
    seconds = time.perf_counter() - start
    folder = Path("runs", spec["name"])
    with (folder / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    best = min((r for r in rows if r["state"] == "complete"), key=lambda r: float(r["val/loss"]))
    settings = yaml.safe_load((folder / "best.yaml").read_text())
    return {"seconds": seconds, "epochs": epochs_trained(folder), "pruned": sum(r["state"] == "pruned" for r in rows),
            "best": best, "settings": settings, "seeds": spec["seeds"]}


def test_accuracies(configs: list[str], seeds: list[int], name: str) -> list[float]:
    """The recipe's test accuracy on each seed: a full `litlab fit` in a forked process each."""
    accs = []
    for seed in seeds:
        args = ["fit", *[a for c in configs for a in ("--config", c)], f"--seed_everything={seed}",
                f"--trainer.logger.init_args.name={name}", "--trainer.enable_progress_bar=false"]
        outcome = sweep_trial.run(sweep_trial.Fit(args, Path(f"{name}-{seed}.log"), env={"WANDB_MODE": "disabled"}))
        assert outcome.code == 0, outcome.reason
        run = max(Path("runs", name).glob("version_*"), key=lambda p: int(p.name[8:]))
        rows = list(csv.DictReader((run / "metrics.csv").open()))
        accs.append(float(next(r["test/acc"] for r in rows if r.get("test/acc"))))
    return accs


def shown(values: list[float]) -> str:
    mean, sd, half = spread([100 * v for v in values])
    return f"{mean:.2f} ± {sd:.2f} (95% CI {mean - half:.2f} to {mean + half:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=24)
    args = parser.parse_args()
    os.environ["WANDB_MODE"] = "disabled"
    os.chdir(tempfile.mkdtemp(prefix="litlab-bench-sweep-"))
    results = {pruner: run_sweep(pruner, args.trials) for pruner in ("median", "none")}
    seeds = results["median"]["seeds"]
    print(f"\n{args.trials} trials of seeds {seeds}, {os.cpu_count()} CPUs, torch threads from OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n")
    print("| pruner | wall time | epochs trained | pruned | best trial | lr | width | val/loss | test acc % of its seeds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pruner, r in results.items():
        b = r["best"]
        lr = b["model.init_args.optimizer.init_args.lr"]
        width = b["model.init_args.backbone.init_args.width"]
        print(f"| {pruner} | {r['seconds']:.0f} s | {r['epochs']} | {r['pruned']} | {b['trial']} | {float(lr):.4g} | "
              f"{width} | {float(b['val/loss']):.4f} | {100 * float(b['test/acc mean']):.2f} |")
    print("\n| recipe (20 epochs) | test acc % over seeds " + " ".join(map(str, seeds)) + " |\n|---|---|")
    print(f"| shipped experiments/digits/mlp.yaml | {shown(test_accuracies([str(MLP)], seeds, 'shipped'))} |")
    for pruner, r in results.items():
        settings = r["settings"]
        settings.get("trainer", {}).pop("max_epochs", None)
        settings = {k: v for k, v in settings.items() if v}
        path = Path(f"best-{pruner}.yaml")
        path.write_text(yaml.safe_dump(settings))
        accs = test_accuracies([str(MLP), str(path)], seeds, f"best-{pruner}")
        print(f"| best of the sweep with pruner {pruner}, trained as the recipe | {shown(accs)} |")


if __name__ == "__main__":
    main()
