"""`litlab report SWEEP_FOLDER`: what a sweep found, from its study.

Writes, in the sweep's folder: `trials.csv` and `best.yaml` again (as the sweep writes them at its
end: every trial's values, metric, state and time; the best trial's whole config), and in its
`report/` folder `trials.md` (the trials table, best first), and Optuna's plots as PNGs:
`history.png` (the metric of each trial and the best so far), `importances.png` (each searched
key's share of the metric's variance, by Optuna's default fANOVA evaluator) and `parallel.png`
(each trial's values across the keys, coloured by its metric). The importances need two finished
trials with different values; with fewer, the report says so and leaves that plot out.

The sweep's folder holds its sweep file (`sweep.yaml`) and where its study lives (`sweep.json`);
a database URL with a password is not written there, so give it again with --storage.
"""

import argparse
import csv
import json
import warnings
from dataclasses import replace
from pathlib import Path

from experiments import sweep as sweeps
from experiments.report import is_sweep
from models.errors import ConfigError


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="litlab report", description="What a sweep found: the trials table, "
                                     "Optuna's history, importances and parallel-coordinates plots, and best.yaml.")
    parser.add_argument("folder", help="the sweep's folder (runs/<sweep name>)")
    parser.add_argument("--storage", help="the study's storage, where the sweep's folder does not name it")
    return parser


def load(folder: Path, storage: str | None):
    """(the sweep, its study) of a sweep's folder."""
    record = json.loads((folder / "sweep.json").read_text())
    storage = storage or record.get("storage")
    if storage is None:
        raise ConfigError(f"{folder}'s study is in a database whose URL holds a password, so the folder does not "
                          "name it; give it with --storage URL.")
    sweep = replace(sweeps.read_sweep(str(folder / "sweep.yaml"), storage), folder=folder)
    optuna = sweeps.optuna_module()
    try:
        study = optuna.load_study(study_name=sweep.name, storage=sweeps.storage_of(sweep))
    except KeyError:
        raise ConfigError(f"{folder}: the storage holds no study named {sweep.name}; give the sweep's --storage.") from None
    return sweep, study


def markdown(rows: list[dict], metric: str, direction: str) -> str:
    """The trials table, best first, then the others by number; numbers to 4 significant digits."""
    def shown(value: str) -> str:
        try:
            return f"{float(value):.4g}"
        except ValueError:
            return value

    columns = [c for c in rows[0] if c != "runs"]
    scored = sorted((r for r in rows if r[metric] != ""), key=lambda r: float(r[metric]),
                    reverse=direction == "maximize")
    ordered = scored + [r for r in rows if r[metric] == ""]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(shown(r[c]) for c in columns) + " |" for r in ordered]
    return "\n".join(lines) + "\n"


def plots(study, sweep, out: Path) -> list[str]:
    """Optuna's history, importances and parallel-coordinates plots as PNGs; the lines saying what was left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    notes, target = [], sweep.metric
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's matplotlib plots are marked experimental
        figures = {"history.png": lambda: vis.plot_optimization_history(study, target_name=target),
                   "parallel.png": lambda: vis.plot_parallel_coordinate(study, target_name=target)}
        varied = any(len({json.dumps(t.params.get(k), default=str) for t in complete}) > 1 for k in sweep.space)
        if len(complete) >= 2 and varied:
            figures["importances.png"] = lambda: vis.plot_param_importances(study, target_name=target)
        else:
            notes.append("importances.png left out: it needs two finished trials with different values")
        for name, draw in figures.items():
            axes = draw()
            figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
            figure.set_size_inches(max(figure.get_size_inches()[0], 8), max(figure.get_size_inches()[1], 5))
            figure.tight_layout()
            figure.savefig(out / name, dpi=100)
            plt.close(figure)
    return notes


def report(folder: Path, storage: str | None = None) -> Path:
    sweep, study = load(folder, storage)
    latest = sweeps.standing(study.get_trials(deepcopy=False))
    if not latest:
        raise ConfigError(f"{folder}: the sweep has no trials yet; run litlab sweep first.")
    sweeps.write_results(sweep, latest)
    out = folder / "report"
    out.mkdir(exist_ok=True)
    with (folder / "trials.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    (out / "trials.md").write_text(f"# Sweep {sweep.name}: {sweep.metric} ({sweep.direction})\n\n"
                                   + markdown(rows, sweep.metric, sweep.direction))
    notes = plots(study, sweep, out)
    for line in notes:
        print(f"litlab report: {line}")
    best = folder / "best.yaml"
    print(f"litlab report: {len(rows)} trials of {sweep.name} in {out}"
          + (f"; the best trial's config: {best}" if best.is_file() else "; no trial has finished yet"))
    return out


def main(arguments: list[str]) -> Path:
    args = parser().parse_args(arguments)
    folder = Path(args.folder)
    if not is_sweep(args.folder):
        raise ConfigError(f"{folder} is not a sweep's folder (it has no sweep.json); give runs/<sweep name>.")
    return report(folder, args.storage)
