"""`litlab report RUN_DIR`: plots and a one-page summary of a run, from its own files, no W&B needed.

Reads the run directory's `metrics.csv` and `config.yaml`, and `test_confusion.csv` or
`predictions.csv` where present (the run's own, else those of its `test/` and `predict/`
commands); writes into the run's `report/` folder `loss.png` (training and validation loss
against step), `metrics.png` (each validation metric against epoch), `lr.png` (the learning
rates), `confusion.png` (the test confusion matrix) and `report.md`, which embeds them with
the final metrics, the best checkpoint and the config's key settings. A run still going, or
killed mid-way (its last row cut short), is reported as far as it got.
"""

import csv
import math
from collections import defaultdict
from pathlib import Path

import yaml

from callbacks.test_report import CONFUSION_FILE
from models.errors import ConfigError

WIDTH, HEIGHT, DPI = 6.4, 4.0, 100  # inches and dots per inch: 640 x 400 pixel plots
Series = dict[str, list[tuple[float, float]]]


def run_folder(path: str) -> Path:
    """`path` itself when it holds metrics.csv, else its newest version_N that does."""
    folder = Path(path)
    if (folder / "metrics.csv").is_file():
        return folder
    versions = sorted(folder.glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name.split("_")[-1]))
    if not versions:
        raise ConfigError(f"{path} holds no metrics.csv (nor a version_N/ folder with one); give a litlab run directory.")
    return versions[-1].parent


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


def line_plot(path: Path, lines: Series, xlabel: str, title: str) -> Path | None:
    if not lines:
        return None
    plt, figure = _figure()
    axes = figure.add_subplot()
    for name, points in sorted(lines.items()):
        xs, ys = zip(*points)
        axes.plot(xs, ys, marker="o" if len(points) < 40 else None, markersize=3, label=name)
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
    data_args = data.get("init_args", {}) or {}
    lines.append(f"data: `{data.get('class_path')}` (batch_size={data_args.get('batch_size')})")
    trainer = config.get("trainer", {}) or {}
    lines.append(f"trainer: max_epochs={trainer.get('max_epochs')}, precision={trainer.get('precision')}, "
                 f"devices={trainer.get('devices')}; seed_everything={config.get('seed_everything')}")
    return lines


def report(run_dir: str) -> Path:
    """Write the plots and report.md into the run directory's report/ folder; returns report.md's path."""
    folder = run_folder(run_dir)
    rows = read_metrics(folder / "metrics.csv")
    if not rows:
        raise ConfigError(f"{folder / 'metrics.csv'} holds no logged row yet; report again once the run has logged a step.")
    out = folder / "report"
    out.mkdir(exist_ok=True)
    plots = {}
    losses = series(rows, "step", lambda k: k in ("train/loss", "val/loss"))
    plots["loss"] = line_plot(out / "loss.png", losses, "step", "Loss")
    evaluation = series(rows, "epoch", lambda k: k.startswith("val/") and k != "val/loss")
    plots["metrics"] = line_plot(out / "metrics.png", evaluation, "epoch", "Validation metrics")
    plots["lr"] = line_plot(out / "lr.png", series(rows, "step", lambda k: k.startswith("lr-")), "step", "Learning rate")
    confusion = read_confusion(folder)
    plots["confusion"] = confusion_plot(out / "confusion.png", *confusion) if confusion else None

    final: dict[str, tuple[float, float | None]] = {}
    for row in rows:
        for key, value in row.items():
            if key.startswith(("val/", "test/")):
                final[key] = (value, row.get("epoch"))
    config_path = folder / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.is_file() else {}
    best = sorted((folder / "checkpoints").glob("best-*.ckpt"), key=lambda p: p.stat().st_mtime)
    last_step = max((row["step"] for row in rows if "step" in row), default=0)
    last_epoch = max((row["epoch"] for row in rows if "epoch" in row), default=0)
    finished = any(key.startswith("test/") for key in final)

    lines = [f"# Run report: {folder}", ""]
    lines.append("Finished: tested." if finished else
                 f"Not finished (still running, or stopped): reported up to epoch {int(last_epoch)}, step {int(last_step)}.")
    lines += ["", "## Final metrics", "", "| metric | value | epoch |", "|---|---|---|"]
    lines += [f"| {key} | {value:.4f} | {'' if epoch is None else int(epoch)} |" for key, (value, epoch) in sorted(final.items())]
    lines += ["", f"Best checkpoint: `{best[-1]}`" if best else "Best checkpoint: none saved yet.", ""]
    if config:
        lines += ["## Settings", "", *[f"- {line}" for line in key_settings(config)], ""]
    titles = {"loss": "Loss", "metrics": "Validation metrics", "lr": "Learning rate", "confusion": "Test confusion matrix"}
    lines += ["## Plots", ""] + [f"![{titles[name]}]({path.name})" for name, path in plots.items() if path]
    written = ", ".join(path.name for path in plots.values() if path)
    out = out / "report.md"
    out.write_text("\n".join(lines) + "\n")
    print(f"Report written to {out} (plots: {written or 'none yet'})", flush=True)
    return out
