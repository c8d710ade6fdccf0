"""The `litlab` command end to end, in subprocesses, as a user runs it."""

import csv
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

EXPERIMENTS = DEFAULTS.parent
MLP = str(EXPERIMENTS / "digits" / "mlp.yaml")
pytestmark = pytest.mark.slow  # real subprocesses
QUICK = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, litlab):
    """One real `litlab fit`, with W&B left to decide offline mode by itself (no credentials), and
    its checkpoints logged as W&B artifacts."""
    cwd = tmp_path_factory.mktemp("fit")
    result = litlab(
        "fit", "--config", MLP, *QUICK, "--trainer.logger.init_args.log_model=true",
        cwd=cwd, env={"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(cwd)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd, result


def test_fit_tests_the_best_checkpoint_and_says_where_everything_went(fitted):
    cwd, result = fitted
    (run,) = (cwd / "runs" / "digits-mlp").iterdir()
    (best,) = (run / "checkpoints").glob("best-epoch*.ckpt")
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert f"best checkpoint: {best.relative_to(cwd)}" in result.stdout
    accuracy = float(result.stdout.split("test/acc = ")[1].split()[0])
    assert accuracy > 0.85
    # Before the first epoch, what a user acts on; none of the dependencies' notices they cannot act on.
    said = result.stdout + result.stderr
    assert "Global batch size 64 = 64 per device" in said and "Total params" in said
    for notice in ("GPU available", "TPU available", "litlogger", "anonymous setting", "LeafSpec",
                   "to estimate number of stepping batches"):
        assert notice not in said, notice
    # The CSV logger ran beside W&B: validation accuracy for each of the two epochs, then the test.
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len([r for r in rows if r.get("val/acc")]) == 2
    assert [float(r["test/acc"]) for r in rows if r.get("test/acc")] == [pytest.approx(accuracy, abs=1e-4)]


def test_without_credentials_the_run_is_logged_offline_with_history_and_config(fitted, wandb_run):
    cwd, result = fitted
    (run_dir,) = (cwd / "runs" / "wandb").glob("offline-run-*")
    assert f"wandb sync {run_dir.relative_to(cwd)}" in result.stdout
    run = wandb_run(run_dir)
    assert (run["name"], run["project"], run["tags"]) == ("digits-mlp", "litlab", ["digits", "mlp"])
    val_acc = [row["val/acc"] for row in run["history"] if "val/acc" in row]
    assert len(val_acc) == 2 and all(0 < acc <= 1 for acc in val_acc)
    config = run["config"]["config"]
    assert config["model"]["init_args"]["backbone"]["class_path"] == "models.backbones.MLP"
    assert config["trainer"]["max_epochs"] == 2 and config["seed_everything"] == 0
    # log_model works offline: the checkpoints are in the run, as model artifacts, to upload with it.
    models = [a for a in run["artifacts"] if a["type"] == "model"]
    assert models and all(a["files"] == ["model.ckpt"] for a in models)


def test_the_test_confusion_matrix_and_the_surest_mistakes_reach_the_run_directory_and_wandb(fitted, wandb_run):
    cwd, _ = fitted
    (run,) = (cwd / "runs" / "digits-mlp").iterdir()
    rows = list(csv.reader((run / "test_confusion.csv").open()))
    assert rows[0] == ["true \\ predicted", *map(str, range(10))]
    matrix = [[int(v) for v in row[1:]] for row in rows[1:]]
    total, right = sum(map(sum, matrix)), sum(matrix[i][i] for i in range(10))
    assert total == 360  # every test image once
    accuracy = [float(r["test/acc"]) for r in csv.DictReader((run / "metrics.csv").open()) if r.get("test/acc")][0]
    assert right / total == pytest.approx(accuracy, abs=1e-4)
    (run_dir,) = (cwd / "runs" / "wandb").glob("offline-run-*")
    logged = {k: v for row in wandb_run(run_dir)["history"] for k, v in row.items()}
    assert logged["test/confusion_matrix_table/nrows"] == 100  # one row per (true, predicted) pair of classes
    assert logged["test/mistakes/nrows"] == min(total - right, 32)
    tables = [a["files"] for a in wandb_run(run_dir)["artifacts"] if a["type"] == "run_table"]
    assert any("test/mistakes.table.json" in files and any(f.endswith(".png") for f in files) for files in tables)


def test_report_plots_a_finished_run_and_one_killed_mid_way(fitted, litlab, litlab_main, tmp_path):
    from PIL import Image

    cwd, _ = fitted
    (run,) = (cwd / "runs" / "digits-mlp").iterdir()
    result = litlab("report", str(run.parent), cwd=cwd)  # the experiment's folder: its newest run
    assert result.returncode == 0, result.stderr[-2000:]
    sizes = {"loss": (640, 400), "metrics": (640, 400), "lr": (640, 400), "confusion": (600, 600)}
    for name, size in sizes.items():
        with Image.open(run / "report" / f"{name}.png") as image:
            image.load()  # decodes the whole file
            assert image.size == size, name
    text = (run / "report" / "report.md").read_text()
    assert "Finished: tested." in text and "| test/acc |" in text and "best-epoch" in text
    assert all(f"]({name}.png)" in text for name in sizes)
    assert "task: `models.Classifier`" in text and "backbone: `models.backbones.MLP`" in text
    # Killed in its second epoch: metrics.csv cut in the middle of a row, no checkpoint, no test yet.
    killed = tmp_path / "killed"
    killed.mkdir()
    lines = (run / "metrics.csv").read_text().splitlines()
    rows = list(csv.DictReader(lines))
    second_epoch = 1 + next(i for i, row in enumerate(rows) if row["epoch"] == "1")  # its line, after the header
    (killed / "metrics.csv").write_text("\n".join(lines[: second_epoch + 1]) + "\n" + lines[second_epoch + 1][:7])
    code, _, err = litlab_main("report", str(killed))  # in process: the subprocess above proved the command
    assert code == 0, err[-2000:]
    text = (killed / "report" / "report.md").read_text()
    assert "Not finished" in text and "Best checkpoint: none saved yet." in text
    assert (killed / "report" / "loss.png").is_file() and not (killed / "report" / "confusion.png").exists()


def test_test_and_predict_from_the_checkpoint(fitted, litlab_main, monkeypatch):
    # In process (main(), as the console script calls it): the fit and the report above prove the
    # installed command, and each process start costs seconds of imports.
    monkeypatch.setenv("WANDB_MODE", "disabled")  # W&B keeps process-wide state; the fit's offline run is read above
    cwd, fit = fitted
    (best,) = (cwd / "runs" / "digits-mlp").glob("version_0/checkpoints/best-epoch*.ckpt")
    accuracy = float(fit.stdout.split("test/acc = ")[1].split()[0])

    code, out, err = litlab_main("test", "--config", MLP, "--ckpt_path", str(best), "--trainer.enable_progress_bar=false")
    assert code == 0, err[-3000:]
    assert f"test/acc = {accuracy:.4f}" in out

    code, _, err = litlab_main("predict", "--config", MLP, "--ckpt_path", str(best), "--trainer.enable_progress_bar=false")
    assert code == 0, err[-3000:]
    # Into the run the checkpoint belongs to, wherever the command runs; no new version_N anywhere.
    out = cwd / "runs" / "digits-mlp" / "version_0" / "predict" / "predictions.csv"
    assert not Path("runs", "digits-mlp").exists() and [p.name for p in out.parents[2].iterdir()] == ["version_0"]
    rows = list(csv.DictReader(out.open()))
    assert [int(r["index"]) for r in rows] == list(range(360))
    probs = [sum(float(r[f"prob_{c}"]) for c in range(10)) for r in rows]
    assert all(p == pytest.approx(1.0, abs=1e-4) for p in probs)
    hits = sum(r["pred"] == r["target"] for r in rows)
    assert hits / len(rows) == pytest.approx(accuracy, abs=1e-4)  # the same model on the same test split


def test_with_wandb_disabled_the_run_has_no_wandb_logger(cli, tmp_path, monkeypatch):
    # WANDB_MODE=disabled (the `cli` fixture's) makes every W&B call a no-op; the logger is left
    # out, so nothing waits for wandb to load and start a run. The local run is kept as always.
    monkeypatch.chdir(tmp_path)
    run = cli("fit", "--config", MLP, "--trainer.max_steps=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1")
    assert [type(logger).__name__ for logger in run.trainer.loggers] == ["RunCSVLogger"]
    assert Path(run.trainer.log_dir, "metrics.csv").is_file() and not Path(run.trainer.log_dir, "wandb_id").exists()
