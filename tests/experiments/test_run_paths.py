"""Where runs go and how a checkpoint is named on the command line: run folders, `last`, and
run directories that two runs started together never share."""

import subprocess
from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")


@pytest.mark.slow
def test_a_run_folder_and_last_stand_for_the_newest_last_checkpoint(cli):
    cli("fit", "--config", MLP, "--trainer.max_epochs=1")
    cli("fit", "--config", MLP, "--trainer.max_epochs=2", "--seed_everything=1")
    newest = Path("runs/digits-mlp/version_1/checkpoints/last.ckpt")

    def tested(ckpt_path: str) -> float:
        return float(cli("test", "--config", MLP, f"--ckpt_path={ckpt_path}").trainer.callback_metrics["test/acc"])

    explicit = tested(str(newest))
    assert tested("last") == explicit
    assert tested("runs/digits-mlp/version_1") == explicit
    assert tested("runs/digits-mlp/version_0") != explicit  # a folder means its own newest last.ckpt


@pytest.mark.slow
def test_two_fits_started_together_get_their_own_run_directories(tmp_path):
    import os
    import sys

    command = [str(Path(sys.executable).with_name("litlab")), "fit", "--config", MLP, "--trainer.max_epochs=1",
               "--trainer.enable_progress_bar=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # Files, not pipes: a pipe left unread while the test waits on the other fit could fill and stop its writer.
    logs = [tmp_path / f"fit{i}.log" for i in range(2)]
    runs = []
    for log in logs:
        with log.open("w") as out:
            runs.append(subprocess.Popen(command, cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT))
    codes = [run.wait(timeout=300) for run in runs]
    assert codes == [0, 0], [log.read_text()[-2000:] for log in logs]
    folders = sorted(p.name for p in (tmp_path / "runs" / "digits-mlp").iterdir())
    assert folders == ["version_0", "version_1"]
    for folder in folders:
        assert (tmp_path / "runs" / "digits-mlp" / folder / "config.yaml").is_file()
        assert (tmp_path / "runs" / "digits-mlp" / folder / "checkpoints" / "last.ckpt").exists()


@pytest.mark.slow
def test_every_command_on_a_run_writes_into_that_run_and_last_is_the_newest_fit_of_the_same_task(cli, monkeypatch,
                                                                                                  tmp_path):
    cli("fit", "--config", MLP, "--trainer.max_epochs=1")
    run = Path("runs/digits-mlp/version_0").resolve()
    # A newer run of another task under the same name, and a newer folder no fit finished a save in.
    other = Path("runs/digits-mlp/version_1")
    (other / "checkpoints").mkdir(parents=True)
    (other / "checkpoints" / "last.ckpt").write_bytes((run / "checkpoints" / "last.ckpt").read_bytes())
    (other / "config.yaml").write_text("model:\n  class_path: models.SimCLR\n")
    Path("runs/digits-mlp/version_2").mkdir()

    tested = cli("test", "--config", MLP, "--ckpt_path=last")
    assert Path(tested.trainer.log_dir).resolve() == run / "test"
    assert float(tested.trainer.callback_metrics["test/acc"]) > 0.5  # version_0's weights, not untrained ones
    cli("predict", "--config", MLP, "--ckpt_path=last")
    cli("export", "--config", MLP, "--ckpt_path=last")
    # The run's own config.yaml, from another folder, for every subcommand.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for subcommand in ("validate", "test", "predict", "export"):
        cli(subcommand, "--config", str(run / "config.yaml"), f"--ckpt_path={run}")
    from experiments.report import report

    assert report(str(run.parent)) == run / "report" / "report.md"  # the experiment's newest run that logged

    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0", "version_1", "version_2"]
    assert (run / "predict" / "predictions.csv").is_file() and (run / "export" / "model.safetensors").is_file()
    assert (run / "test" / "metrics.csv").is_file() and (run / "validate" / "metrics.csv").is_file()
    assert (run / "report" / "confusion.png").is_file()
    assert not (elsewhere / "runs" / "digits-mlp").exists()


def test_last_under_slurm_is_the_run_this_job_started(tmp_path):
    from experiments.runs import SLURM_JOB, newest_fit

    for version, job in ((0, "11"), (1, "12")):
        folder = tmp_path / f"version_{version}"
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").touch()
        (folder / "config.yaml").write_text("model:\n  class_path: models.Classifier\n")
        (folder / SLURM_JOB).write_text(job)
    (tmp_path / "version_10" / "checkpoints").mkdir(parents=True)  # by version, not by name: 10 > 9
    (tmp_path / "version_10" / "checkpoints" / "last.ckpt").touch()
    assert newest_fit(tmp_path, "models.Classifier", job="11") == tmp_path / "version_0" / "checkpoints" / "last.ckpt"
    assert newest_fit(tmp_path, "models.Classifier") == tmp_path / "version_10" / "checkpoints" / "last.ckpt"
    assert newest_fit(tmp_path, "models.Classifier", job="99") == tmp_path / "version_10" / "checkpoints" / "last.ckpt"
    assert newest_fit(tmp_path / "none", "models.Classifier") is None


FOLDER_CNN = str(DEFAULTS.parent / "folder" / "cnn.yaml")


@pytest.mark.slow
def test_reusing_a_finished_run_is_one_line_per_mistake_and_leaves_the_run_as_it_was(litlab_main, monkeypatch,
                                                                                     tmp_path):
    from tests.conftest import write_image_folder

    monkeypatch.setenv("WANDB_MODE", "disabled")
    images = write_image_folder(tmp_path / "images", classes=2, per_class=12)
    quiet = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    fit = ["fit", "--config", FOLDER_CNN, f"--data.root={images}", "--data.image_size=16", "--trainer.max_epochs=1"]
    code, _, err = litlab_main(*fit, *quiet)
    assert code == 0, err[-2000:]
    run = tmp_path / "runs" / "folder-cnn" / "version_0"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))

    cases = [  # (arguments, what the one line must say)
        (["test", "--config", FOLDER_CNN, "--ckpt_path=last"],
         ["Image folder path/to/images does not exist", "set data.root"]),
        (["test", "--config", FOLDER_CNN, f"--data.root={images}", "--data.image_size=16", "--data.channels=1",
          "--ckpt_path=last"],
         ["backbone.features.0.weight is [32, 3, 3, 3] in the checkpoint and [32, 1, 3, 3] as configured",
          "data.channels"]),
        (["predict", "--config", str(run / "config.yaml"), "--ckpt_path", str(tmp_path / "no-such.ckpt")],
         ["no-such.ckpt", "not found"]),
    ]
    for args, said in cases:
        code, _, err = litlab_main(*args, *quiet)
        lines = [line for line in err.splitlines() if line.startswith("litlab: error:")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, err[-2000:])
        assert all(part in lines[0] for part in said), (args, lines[0])
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # nothing left behind, nothing lost
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
os.ftruncate(fd, 0)
os.write(fd, b"process 4242 on elsewhere")
fcntl.lockf(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(120)
"""


def test_a_run_has_one_writer_and_the_lock_of_a_killed_one_is_taken_over(cli, litlab_main, monkeypatch):
    import sys

    cli("fit", "--config", MLP, "--trainer.max_epochs=1")
    run = Path("runs/digits-mlp/version_0")
    before = (run / "metrics.csv").read_bytes()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run / "run.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = litlab_main("fit", "--config", MLP, "--trainer.max_epochs=1", "--ckpt_path=last")
        assert code == 2 and "Traceback" not in err
        assert f"litlab: error: {run} is in use: process 4242 on elsewhere trains in it" in err
        assert (run / "metrics.csv").read_bytes() == before  # the refused resume touched nothing
    finally:
        holder.kill()
        holder.wait()
    # A resume trains the run it continues: another learning rate or batch is refused, each change named.
    config = (run / "config.yaml").read_bytes()
    code, _, err = litlab_main("fit", "--config", MLP, "--trainer.max_epochs=1", "--ckpt_path=last",
                               "--model.optimizer.init_args.lr=0.03", "--data.batch_size=32")
    assert code == 2 and "Traceback" not in err
    assert (f"litlab: error: {run} was trained with another config (data.init_args.batch_size: 64 -> 32; "
            "model.init_args.optimizer.init_args.lr: 0.002 -> 0.03); resume it with its own config") in err
    assert (run / "config.yaml").read_bytes() == config and not (run / "changes.yaml").exists()
    code, _, err = litlab_main("fit", "--config", MLP, "--trainer.max_epochs=1", "--ckpt_path=last")
    assert code == 0, err[-2000:]
    assert f"process {__import__('os').getpid()} on" in (run / "run.lock").read_text()
