"""`litlab report` on several runs compares them: a table with the spread over the runs, and
every run's curve on one plot per metric. The runs are files in the format a fit writes."""

import csv
import math
import statistics

import pytest
import yaml

from experiments.report import same_lines, spread, t_975

FIELDS = ["epoch", "lr-AdamW/decay", "lr-AdamW/no_decay", "step", "test/acc", "train/acc", "train/loss",
          "val/acc", "val/loss"]


def write_run(folder, seed: int, accuracy: list[float], test_acc: float, lr: float = 0.001) -> None:
    """A finished run as `litlab fit` leaves it: config.yaml, metrics.csv (the CSV logger's rows:
    learning rates and the step's loss at steps, validation and training figures at epoch ends, the
    test after the last epoch) and a best checkpoint named by its epoch."""
    folder.mkdir(parents=True)
    config = {"seed_everything": seed, "model": {"class_path": "models.Classifier", "init_args": {"num_classes": 10, "lr": lr}},
              "data": {"class_path": "datamodules.DigitsDataModule", "init_args": {"batch_size": 64, "as_sequence": False}},
              "trainer": {"max_epochs": len(accuracy)}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = []
    for epoch, acc in enumerate(accuracy):
        step = 10 * (epoch + 1) - 1
        rows.append({"step": step, "lr-AdamW/decay": 1e-3, "lr-AdamW/no_decay": 1e-3})
        rows.append({"epoch": epoch, "step": step, "train/loss": 2.0 - acc})
        rows.append({"epoch": epoch, "step": step, "val/acc": acc, "val/loss": 1.5 - acc})
        rows.append({"epoch": epoch, "step": step, "train/acc": acc - 0.05})
    rows.append({"epoch": len(accuracy), "step": 10 * len(accuracy), "test/acc": test_acc})
    with (folder / "metrics.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    best = max(range(len(accuracy)), key=accuracy.__getitem__)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / f"best-epoch{best:03d}-loss{1.5 - accuracy[best]:.4f}.ckpt").write_bytes(b"")


def test_the_spread_is_the_mean_the_sample_deviation_and_students_interval():
    mean, sd, half = spread([0.9, 0.92, 0.94])
    assert mean == pytest.approx(0.92) and sd == pytest.approx(0.02)
    assert half == pytest.approx(4.303 * 0.02 / math.sqrt(3))  # t(0.975, 2 degrees of freedom)
    assert t_975(1) == 12.706 and t_975(11) == 2.228 and t_975(100) == 1.96
    assert math.isnan(spread([0.9])[1])
    # Series equal point for point are drawn once, named together; others stay apart.
    assert same_lines({"b": [(0, 1.0)], "a": [(0, 1.0)], "c": [(0, 2.0)]}) == {"a = b": [(0, 1.0)], "c": [(0, 2.0)]}


def test_three_seeds_are_compared_in_a_table_with_their_spread_and_overlaid_curves(litlab_main, tmp_path):
    from PIL import Image

    accuracies = {0: ([0.80, 0.90, 0.93], 0.95), 1: ([0.82, 0.91, 0.90], 0.93), 2: ([0.78, 0.88, 0.94], 0.97)}
    experiment = tmp_path / "runs" / "digits-cnn"
    for seed, (accuracy, test_acc) in accuracies.items():
        write_run(experiment / f"version_{seed}", seed, accuracy, test_acc)
    runs = [str(experiment / f"version_{seed}") for seed in accuracies]

    code, out, err = litlab_main("report", str(experiment))  # the experiment's folder: each of its runs
    assert code == 0, err
    folder = experiment / "comparison"
    assert f"Comparison written to {folder / 'comparison.md'}" in out
    text = (folder / "comparison.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| seed_everything=")]
    assert len(table) == 3  # a row per run, named by what differs in its config
    assert table[1].startswith(f"| seed_everything=1 | `{experiment / 'version_1'}` | 3 | ")
    assert "| 0.9100 |" in table[1] and "| 0.9300 |" in table[1]  # its best val/acc, its test/acc
    tests = [test for _, test in accuracies.values()]
    mean, sd = statistics.fmean(tests), statistics.stdev(tests)
    half = 4.303 * sd / math.sqrt(3)
    assert "Over the 3 runs, which differ only in their seeds: mean" in text
    assert f"| test/acc | {mean:.4f} | {sd:.4f} | {mean - half:.4f} to {mean + half:.4f} |" in text
    best = [max(a) for a, _ in accuracies.values()]
    assert f"| best val/acc | {statistics.fmean(best):.4f} | {statistics.stdev(best):.4f} |" in text
    for name in ("val_acc", "val_loss", "train_loss"):
        assert f"]({name}.png)" in text
        with Image.open(folder / f"{name}.png") as image:
            image.load()
            assert image.size == (640, 400)

    # One run alone: its own report, titled by its name, the best epoch marked, the data settings listed.
    code, out, err = litlab_main("report", runs[1])
    assert code == 0, err
    report = (experiment / "version_1" / "report" / "report.md").read_text()
    assert report.startswith("# Run report: digits-cnn/version_1")
    assert "data: `datamodules.DigitsDataModule` (batch_size=64, as_sequence=False)" in report
    assert (experiment / "version_1" / "report" / "metrics.png").is_file()


def test_a_comparison_refuses_a_run_named_twice_and_a_folder_without_runs(litlab_main, tmp_path):
    write_run(tmp_path / "a" / "version_0", 0, [0.9], 0.9)
    code, _, err = litlab_main("report", str(tmp_path / "a" / "version_0"), str(tmp_path / "a"))
    assert code == 2 and "The same run is named twice; give each run folder once." in err
    code, _, err = litlab_main("report", str(tmp_path / "a"), str(tmp_path / "nothing"))
    assert code == 2 and "holds no metrics.csv" in err
    code, _, err = litlab_main("report", str(tmp_path / "a"), "--out", str(tmp_path / "x"))
    assert code == 2 and "--out is where a comparison goes" in err


def test_runs_of_two_recipes_get_the_spread_of_each_recipes_seeds(litlab_main, tmp_path):
    experiment = tmp_path / "runs" / "digits-cnn"
    for version, (seed, lr, test_acc) in enumerate([(0, 0.001, 0.9), (1, 0.001, 0.94), (0, 0.01, 0.8), (1, 0.01, 0.84)]):
        write_run(experiment / f"version_{version}", seed, [0.5, test_acc], test_acc, lr=lr)
    code, out, err = litlab_main("report", str(experiment / "version_*"), "--out", str(tmp_path / "lr"))  # a pattern
    assert code == 0, err
    text = (tmp_path / "lr" / "comparison.md").read_text()
    assert "| model.lr=0.01, seed_everything=1 |" in text  # each run named by what differs
    assert "Over the 2 runs of model.lr=0.001:" in text and "Over the 2 runs of model.lr=0.01:" in text
    assert "| test/acc | 0.9200 | 0.0283 |" in text and "| test/acc | 0.8200 | 0.0283 |" in text
    code, _, err = litlab_main("report", str(tmp_path / "none_*"))
    assert code == 2 and "matches no folder" in err
