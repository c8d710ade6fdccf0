"""`litlab report RUN [RUN ...]`: plots and a one-page summary of a run, or a comparison of
several, from their own files, no W&B needed.

One run: reads the run directory's `metrics.csv` and `config.yaml`, and `test_confusion.csv` or
`predictions.csv` where present (the run's own, else those of its `test/` and `predict/`
commands); writes into the run's `report/` folder `loss.png` (training and validation loss
against step), `metrics.png` (each training and validation metric against epoch), `lr.png` (the
learning rate of each parameter group), `confusion.png` (the test confusion matrix) and
`report.md`, which embeds them with the final metrics, the best checkpoint and the config's key
settings. The plots are titled with the run's name and mark the best checkpoint's epoch. A run
still going, or killed mid-way (its last row cut short), is reported as far as it got.

Several runs (run folders, an experiment's folder for all its runs, or a pattern): writes
`comparison.md`, a table of every run's epochs, best validation figures and test metrics, each
run named by the settings in which its config differs from the others' (`seed_everything=1`);
for each group of runs that differ only in their seeds, the mean, standard deviation and 95%
confidence interval of each figure; and one plot per metric with every run's curve, into
`comparison/` beside the runs (or `--out`).
"""

import argparse
import csv
import glob
import math
import os
import re
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from callbacks.test_report import CONFUSION_FILE
from models.errors import ConfigError

WIDTH, HEIGHT, DPI = 6.4, 4.0, 100  # inches and dots per inch: 640 x 400 pixel plots
Series = dict[str, list[tuple[float, float]]]


def run_folder(path: str) -> Path:
    """`path` itself when it holds metrics.csv, else its newest version_N that does."""
    return runs_in(path)[-1]


def runs_in(path: str) -> list[Path]:
    """The runs `path` names: itself when it holds metrics.csv, else each version_N in it that
    does (an experiment's folder), in version order."""
    folder = Path(path)
    if (folder / "metrics.csv").is_file():
        return [folder]
    versions = sorted(folder.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not versions:
        raise ConfigError(f"{path} holds no metrics.csv (nor a version_N/ folder with one); give a litlab run directory.")
    return [version.parent for version in versions]


def is_sweep(folder: str) -> bool:
    """Whether `folder` is a sweep's (runs/<sweep name>, which `litlab sweep` marks with sweep.json and
    sweep.yaml): what `litlab report` then reports is experiments/sweep_report.py's."""
    return (Path(folder) / "sweep.json").is_file() and (Path(folder) / "sweep.yaml").is_file()


def named_runs(paths: list[str]) -> list[Path]:
    """Every run the arguments name: run folders, experiments' folders (each of their runs) and
    glob patterns the shell left alone (`'runs/digits-cnn/version_*'`)."""
    folders = []
    for path in paths:
        matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
        if not matches:
            raise ConfigError(f"{path} matches no folder; give run folders, an experiment's folder, or a pattern that matches some.")
        for match in matches:
            folders.extend(runs_in(match))
    return folders


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of metrics.csv as numbers; empty cells and a last row cut short by a kill are left out."""
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                values = {}
                for key, text in row.items():
                    if key is None or not text:
                        continue
                    try:
                        values[key] = float(text)
                    except (TypeError, ValueError):
                        continue  # a value cut short by a kill in the middle of a write
                rows.append(values)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ConfigError(
            f"{path} is damaged ({type(err).__name__}: {str(err)[:80]}), not a metrics.csv a run wrote; "
            "report a run whose metrics.csv is intact, or move the damaged file away."
        ) from None
    return rows


def series(rows: list[dict[str, float]], x: str, keep) -> Series:
    """{metric: [(x, value), ...]} for every metric `keep` accepts, where the row has both."""
    out: Series = defaultdict(list)
    for row in rows:
        if x not in row:
            continue
        for key, value in row.items():
            if keep(key) and math.isfinite(value):
                out[key].append((row[x], value))
    return dict(out)


def _figure(width: float = WIDTH, height: float = HEIGHT):
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt, plt.figure(figsize=(width, height), dpi=DPI)


def same_lines(lines: Series) -> Series:
    """`lines` with the series that are equal point for point drawn once, named together
    ("lr-AdamW/decay = lr-AdamW/no_decay"): otherwise one hides the others exactly."""
    merged: dict[tuple, list[str]] = {}
    for name, points in sorted(lines.items()):
        merged.setdefault(tuple(points), []).append(name)
    return {" = ".join(names): list(points) for points, names in merged.items()}


def line_plot(path: Path, lines: Series, xlabel: str, title: str, mark: tuple[float, str] | None = None) -> Path | None:
    """One line per series; `mark` is (x, label) of a dashed vertical line (the best checkpoint)."""
    if not lines:
        return None
    plt, figure = _figure()
    axes = figure.add_subplot()
    for name, points in same_lines(lines).items():
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker="o" if len(points) < 40 else None, markersize=3, label=name)
    if mark is not None:
        axes.axvline(mark[0], color="grey", linestyle="--", linewidth=1, label=mark[1])
    axes.set(xlabel=xlabel, title=title)
    if xlabel == "epoch":
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def first_file(folder: Path, name: str) -> Path | None:
    """`name` in the run folder itself, else in the folder of its `test` or `predict` command."""
    return next((p for p in (folder / name, folder / "test" / name, folder / "predict" / name) if p.is_file()), None)


def read_confusion(folder: Path) -> tuple[list[str], list[list[int]]] | None:
    """The test confusion matrix (rows: true class) from test_confusion.csv, else from predictions.csv."""
    if (path := first_file(folder, CONFUSION_FILE)) is not None:
        with path.open(newline="") as f:
            header, *rows = list(csv.reader(f))
        return header[1:], [[int(v) for v in row[1:]] for row in rows]
    if (path := first_file(folder, "predictions.csv")) is not None:
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("target") not in (None, "", "-100") and r.get("pred")]
        if rows:
            names = [key.removeprefix("prob_") for key in rows[0] if key.startswith("prob_")]  # the data's label order
            index = {name: c for c, name in enumerate(names)}
            matrix = [[0] * len(names) for _ in names]
            for r in rows:
                matrix[index[r["target"]]][index[r["pred"]]] += 1
            return names, matrix
    return None


def confusion_plot(path: Path, names: list[str], matrix: list[list[int]]) -> Path:
    plt, figure = _figure(6.0, 6.0)
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    axes.set_xticks(ticks, names, rotation=90 if len(names) > 10 else 0, fontsize=8)
    axes.set_yticks(ticks, names, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title="Test confusion matrix")
    if len(names) <= 20:
        peak = max(max(row) for row in matrix) or 1
        for i, row in enumerate(matrix):
            for j, value in enumerate(row):
                axes.text(j, i, value, ha="center", va="center", fontsize=7,
                          color="white" if value > peak / 2 else "black")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)
    return path


def _settings(part: dict) -> str:
    """`key=value` for each scalar argument a class was given."""
    args = part.get("init_args") or {}
    return ", ".join(f"{k}={v}" for k, v in args.items() if v is not None and not isinstance(v, (dict, list)))


def key_settings(config: dict) -> list[str]:
    """The lines of the config a reader looks for first."""
    model = config.get("model", {}) or {}
    args = model.get("init_args", {}) or {}
    lines = [f"task: `{model.get('class_path', '?')}`"]
    for name in ("backbone", "image_backbone", "text_backbone", "teacher"):
        part = args.get(name)
        if isinstance(part, dict):
            settings = ", ".join(f"{k}={v}" for k, v in (part.get("init_args") or {}).items() if v is not None)
            lines.append(f"{name}: `{part.get('class_path')}` ({settings})")
    optimizer = args.get("optimizer")
    if isinstance(optimizer, dict):
        opt_args = optimizer.get("init_args") or {}
        lines.append(f"optimizer: `{optimizer.get('class_path')}` (lr={opt_args.get('lr')}, "
                     f"weight_decay={opt_args.get('weight_decay')}), schedule: {args.get('schedule')}")
    data = config.get("data", {}) or {}
    lines.append(f"data: `{data.get('class_path')}` ({_settings(data)})")
    trainer = config.get("trainer", {}) or {}
    lines.append(f"trainer: max_epochs={trainer.get('max_epochs')}, precision={trainer.get('precision')}, "
                 f"devices={trainer.get('devices')}; seed_everything={config.get('seed_everything')}")
    return lines


def run_name(folder: Path) -> str:
    """experiment/version_N, as the runs/ tree names a run."""
    return f"{folder.parent.name}/{folder.name}"


def best_epoch(folder: Path) -> int | None:
    """The epoch of the run's best checkpoint, from its name (best-epoch012-...)."""
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    found = re.search(r"epoch(\d+)", best[-1].name) if best else None
    return int(found.group(1)) if found else None


def epoch_metric(key: str) -> bool:
    """A metric logged once an epoch: validation's, and training's other than the per-step loss."""
    return (key.startswith("val/") or key.startswith("train/")) and not key.endswith("loss")


def report(run_dir: str) -> Path:
    """Write the plots and report.md into the run directory's report/ folder; returns report.md's path."""
    folder = run_folder(run_dir)
    rows = read_metrics(folder / "metrics.csv")
    if not rows:
        raise ConfigError(f"{folder / 'metrics.csv'} holds no logged row yet; report again once the run has logged a step.")
    out = folder / "report"
    out.mkdir(exist_ok=True)
    name, best = run_name(folder), best_epoch(folder)
    at_best = None if best is None else f"best checkpoint (epoch {best})"
    last_step_of_best = max((r["step"] for r in rows if r.get("epoch") == best and "step" in r), default=None)
    plots = {}
    losses = series(rows, "step", lambda k: k in ("train/loss", "val/loss"))
    plots["loss"] = line_plot(out / "loss.png", losses, "step", f"{name}: loss",
                              None if last_step_of_best is None else (last_step_of_best, at_best))
    evaluation = series(rows, "epoch", epoch_metric)
    plots["metrics"] = line_plot(out / "metrics.png", evaluation, "epoch", f"{name}: training and validation metrics",
                                 None if best is None else (best, at_best))
    plots["lr"] = line_plot(out / "lr.png", series(rows, "step", lambda k: k.startswith("lr-")), "step",
                            f"{name}: learning rate")
    confusion = read_confusion(folder)
    plots["confusion"] = confusion_plot(out / "confusion.png", *confusion) if confusion else None
    # How fast each epoch trained (callbacks.Speed): tokens per second where the inputs are tokens.
    speed = read_metrics(folder / "speed.csv") if (folder / "speed.csv").is_file() else []
    rate = "tokens_per_s" if any("tokens_per_s" in row for row in speed) else "samples_per_s"
    plots["speed"] = line_plot(out / "speed.png", series(speed, "epoch", lambda k: k == rate), "epoch",
                               f"{name}: training {rate.removesuffix('_per_s')} per second")
    utilisation = {"MFU (%)": [(e, 100 * v) for e, v in series(speed, "epoch", lambda k: k == "mfu").get("mfu", [])]}
    plots["mfu"] = line_plot(out / "mfu.png", {k: v for k, v in utilisation.items() if v}, "epoch",
                             f"{name}: model FLOPs utilisation")

    final: dict[str, tuple[float, float | None]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(("val/", "test/")):
                final[key] = (value, row.get("epoch"))
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)  # the newest
    last_step = max((row["step"] for row in rows if "step" in row), default=0)
    last_epoch = max((row["epoch"] for row in rows if "epoch" in row), default=0)
    finished = any(key.startswith("test/") for key in final)

    lines = [f"# Run report: {name}", "", f"Run folder: `{folder}`", ""]
    lines.append("Finished: tested." if finished else
                 f"Not finished (still running, or stopped): reported up to epoch {int(last_epoch)}, step {int(last_step)}.")
    lines += ["", "## Final metrics", "", "| metric | value | epoch |", "|---|---|---|"]
    lines += [f"| {key} | {value:.4f} | {'' if epoch is None else int(epoch)} |" for key, (value, epoch) in sorted(final.items())]
    lines += ["", f"Best checkpoint: `{best[-1]}`" if best else "Best checkpoint: none saved yet.", ""]
    if config:
        lines += ["## Settings", "", *[f"- {line}" for line in key_settings(config)], ""]
    if speed:
        last = speed[-1]
        figures = [f"{last[k]:,.0f} {unit}" for k, unit in (("samples_per_s", "samples/s"), ("tokens_per_s", "tokens/s"))
                   if k in last]
        if "flops_per_batch" in last:
            figures.append(f"{last['flops_per_batch'] / 1e9:.3g} GFLOP a batch")
        if "mfu" in last:
            figures.append(f"MFU {100 * last['mfu']:.2g}% of a {last['peak_flops'] / 1e12:.3g} TFLOP/s peak")
        figures.append(f"peak memory {last['peak_memory_gb']:.2f} GB")
        lines += ["## Speed", "", f"Last epoch ({int(last['epoch']) + 1}): " + ", ".join(figures) + ".", ""]
    titles = {"loss": "Loss", "metrics": "Training and validation metrics", "lr": "Learning rate",
              "confusion": "Test confusion matrix", "speed": "Training speed", "mfu": "Model FLOPs utilisation"}
    lines += ["## Plots", ""] + [f"![{titles[name]}]({path.name})" for name, path in plots.items() if path]
    written = ", ".join(path.name for path in plots.values() if path)
    out = out / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"Report written to {out} (plots: {written or 'none yet'})", flush=True)
    return out


# ---- several runs ----

T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042}  # Student's t, two-sided 95%, by degrees of freedom


def t_975(dof: int) -> float:
    """Student's t quantile for a two-sided 95% interval: the table's entry at or just below `dof`
    (a slightly wider interval between entries), and the normal 1.96 past 30."""
    return 1.96 if dof > 30 else T_975[max(k for k in T_975 if k <= dof)]


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, sample standard deviation, half-width of the 95% confidence interval of the mean)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    sd = statistics.stdev(values)
    return mean, sd, t_975(len(values) - 1) * sd / math.sqrt(len(values))


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    """{dotted.key: value} of a config, init_args left out of the keys (model.optimizer.lr)."""
    out = {}
    for key, value in config.items():
        name = prefix if key == "init_args" else f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(flat(value, name))
        else:
            out[name] = value
    return out


SEEDS = ("seed_everything", "data.seed")  # the settings that draw a run's randomness, not its recipe


def differences(configs: list[dict]) -> list[str]:
    """The settings in which the runs' configs differ (their logger's aside)."""
    flats = [flat(c) for c in configs]
    keys = sorted({k for f in flats for k in f})
    return [k for k in keys if len({repr(f.get(k)) for f in flats}) > 1 and not k.startswith("trainer.logger")]


def labels(configs: list[dict], folders: list[Path]) -> list[str]:
    """Each run named by the settings in which its config differs from the others' (at most
    three), else by its folder."""
    differ = differences(configs)
    if not differ or not all(configs):
        return [run_name(folder) for folder in folders]
    return [", ".join(f"{k}={flat(c).get(k)}" for k in differ[:3]) for c in configs]


def recipes(configs: list[dict]) -> list[str]:
    """Each run's recipe: the settings it differs in other than its seeds ("" where only seeds
    differ). Runs of one recipe are repeats, whose spread the comparison gives."""
    differ = [k for k in differences(configs) if k not in SEEDS]
    return [", ".join(f"{k}={flat(c).get(k)}" for k in differ[:3]) for c in configs]


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """A run's figures for the table: epochs trained, best validation loss and accuracy (and
    the like), and its final test metrics."""
    figures = {"epochs": 1 + max((r["epoch"] for r in rows if "epoch" in r and not any(k.startswith("test/") for k in r)),
                                 default=-1)}
    for key in sorted({k for r in rows for k in r if k.startswith("val/")}):
        values = [r[key] for r in rows if key in r and math.isfinite(r[key])]
        if values:
            figures[f"best {key}"] = (min if key.endswith("loss") else max)(values)
    for row in rows:
        figures.update({k: v for k, v in row.items() if k.startswith("test/")})
    return figures


def compare(folders: list[Path], out: str | None = None) -> Path:
    """Write comparison.md and one plot per metric, every run's curve on it, for the run folders
    `folders` (as `named_runs` finds them); returns comparison.md's path."""
    if len(set(f.resolve() for f in folders)) < len(folders):
        raise ConfigError("The same run is named twice; give each run folder once.")
    rows = {}
    for folder in folders:
        rows[folder] = read_metrics(folder / "metrics.csv")
        if not rows[folder]:
            raise ConfigError(f"{folder / 'metrics.csv'} holds no logged row yet; compare it once it has logged a step.")
    configs = [yaml.safe_load((f / "config.yaml").read_text()) if (f / "config.yaml").is_file() else {} for f in folders]
    names = dict(zip(folders, labels(configs, folders)))
    target = Path(out) if out else Path(os.path.commonpath([f.resolve() for f in folders])) / "comparison"
    target.mkdir(parents=True, exist_ok=True)

    figures = {folder: summary(rows[folder]) for folder in folders}
    columns = [c for c in dict.fromkeys(k for f in folders for k in figures[f]) if c != "epochs"]
    lines = [f"# Comparison of {len(folders)} runs", "", "| run | folder | epochs | " + " | ".join(columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for folder in folders:
        cells = [f"{figures[folder][c]:.4f}" if c in figures[folder] else "" for c in columns]
        lines.append(f"| {names[folder]} | `{folder}` | {int(figures[folder]['epochs'])} | " + " | ".join(cells) + " |")
    # Runs that differ only in their seeds repeat one recipe: the spread of each figure over them.
    groups: dict[str, list[Path]] = {}
    for folder, recipe in zip(folders, recipes(configs) if all(configs) else [""] * len(folders)):
        groups.setdefault(recipe, []).append(folder)
    for recipe, members in groups.items():
        shared = [c for c in columns if all(c in figures[f] for f in members)]
        if len(members) < 2 or not shared:
            continue
        of = f"the {len(members)} runs" + (f" of {recipe}" if recipe else "") + (", which differ only in their seeds"
                                                                                 if len(groups) == 1 and all(configs) else "")
        lines += ["", f"Over {of}: mean, sample standard deviation and the 95% confidence interval of the mean "
                  "(Student's t).", "", "| metric | mean | sd | 95% CI |", "|---|---|---|---|"]
        for column in shared:
            mean, sd, half = spread([figures[f][column] for f in members])
            lines.append(f"| {column} | {mean:.4f} | {sd:.4f} | {mean - half:.4f} to {mean + half:.4f} |")

    plots = []
    curves = {"val": ("epoch", lambda k: k.startswith("val/")), "train": ("step", lambda k: k == "train/loss")}
    for kind, (x, keep) in curves.items():
        per_run = {folder: series(rows[folder], x, keep) for folder in folders}
        for metric in sorted({m for s in per_run.values() for m in s}):
            lines_of = {names[f]: per_run[f][metric] for f in folders if metric in per_run[f]}
            path = target / f"{metric.replace('/', '_')}.png"
            plots.append(line_plot(path, lines_of, x, f"{metric} of {len(lines_of)} runs"))
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots if p]
    written = target / "comparison.md"
    written.write_text("\n".join(lines) + "\n")
    print(f"Comparison written to {written} (plots: {', '.join(p.name for p in plots if p) or 'none yet'})", flush=True)
    return written


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litlab report",
        description="Plots and a summary of a run from its own files, or a comparison of several runs.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="a run folder (runs/NAME/version_N), an experiment's folder (runs/NAME: each of its runs) "
                             "or a pattern (runs/NAME/version_*); one run is reported, several are compared")
    parser.add_argument("--out", help="the folder a comparison is written to (default: comparison/ beside the runs)")
    return parser


def main(arguments: list[str]) -> Path:
    """`litlab report ...`: one run reported, several compared."""
    args = parser().parse_args(arguments)
    folders = named_runs(args.runs)
    if len(folders) == 1:
        if args.out:
            raise ConfigError("--out is where a comparison goes; a single run's report is written into its report/ folder.")
        return report(str(folders[0]))
    return compare(folders, args.out)
