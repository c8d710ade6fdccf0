"""A fit interrupted mid-epoch and resumed from its last.ckpt ends exactly where the
uninterrupted fit ends: same weights, bit for bit, and the same metrics file, in the same run
directory, with shuffling, dropout and augmentation (per sample in worker processes, and on
the device) all drawing."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments.cli import DEFAULTS

DIGITS = DEFAULTS.parent / "digits"


class Interrupted(Exception):
    """Stands for a kill: the process's state is lost, only what is on disk remains."""


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, flags",
    [("cnn_augment", ["--data.num_workers=2", "--model.backbone.dropout=0.2"]), ("simclr", []), ("cnn_muon", [])],
    ids=["per-sample-in-workers", "on-device", "muon"],
)
def test_an_interrupted_fit_resumed_from_last_ckpt_ends_bit_identical(cli, interrupted_fit, tmp_path, experiment, flags):
    # A checkpoint every 3 steps: the resume starts in the middle of epoch two.
    args = ["fit", "--config", frequent_checkpoints(tmp_path, 3), "--config", str(DIGITS / f"{experiment}.yaml"),
            "--trainer.max_epochs=3", *flags]
    reference = Path(cli(*args).trainer.log_dir)

    task = type(cli(*args, "--trainer.max_steps=1").model)  # the task class the recipe builds
    interrupted = interrupted_fit(task, args, lambda model, batch_idx: model.current_epoch == 1 and batch_idx == 4,
                                  reference.parent)
    # A new process starts from other random states; the checkpoint must bring back the right ones.
    torch.manual_seed(1234), random.seed(1234), np.random.seed(1234)
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["epoch"] == 1 and saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] > 0
    resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)

    assert resumed == interrupted  # the interrupted run's own directory, continued
    expected, got = final_state(reference), final_state(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]
    # Every metric of every step, as the uninterrupted run logged it: the rows past the checkpoint
    # that the interrupted run had written are replaced by the resumed run's.
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_kill_between_an_epochs_end_and_its_closing_metrics_loses_neither(cli, monkeypatch, tmp_path):
    # Lightning logs an epoch's closing metrics after every on_train_epoch_end hook; the task's own
    # hook runs after LatestCheckpoint's. A kill there must not leave a checkpoint that claims the
    # epoch done while metrics.csv never got its closing row.
    args = ["fit", "--config", frequent_checkpoints(tmp_path, 7), "--config", str(DIGITS / "mlp.yaml"),
            "--trainer.max_epochs=3"]
    reference = Path(cli(*args).trainer.log_dir)
    task = type(cli(*args, "--trainer.max_steps=1").model)
    epoch_end = task.on_train_epoch_end

    def killed_as_epoch_one_ends(self):
        epoch_end(self)
        if self.current_epoch == 1:
            raise Interrupted

    monkeypatch.setattr(task, "on_train_epoch_end", killed_as_epoch_one_ends)
    with pytest.raises(Interrupted):
        cli(*args)
    monkeypatch.setattr(task, "on_train_epoch_end", epoch_end)
    interrupted = max(reference.parent.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    assert torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 35  # step 35's save
    resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)
    expected, got = final_state(reference), final_state(resumed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


@pytest.mark.slow
def test_a_stop_or_a_kill_at_a_logged_step_keeps_that_steps_metrics(cli, monkeypatch, tmp_path):
    # Lightning logs a step's metrics after every on_train_batch_end hook, so the state of step 30
    # (a logged step, a checkpoint step) is written only once its row is. A SIGTERM during that step
    # stops the run there; a kill right after the step's hooks leaves the previous checkpoint newest.
    # Either way the resumed run's metrics.csv is the uninterrupted one's.
    from callbacks.checkpoints import Preempted

    args = ["fit", "--config", frequent_checkpoints(tmp_path, 10), "--config", str(DIGITS / "mlp.yaml"),
            "--trainer.max_epochs=2"]
    reference = Path(cli(*args).trainer.log_dir)
    task = type(cli(*args, "--trainer.max_steps=1").model)
    train, batch_end = task.training_step, task.on_train_batch_end

    def signalled_in_step_30(self, batch, batch_idx):
        if self.global_step == 29:
            os.kill(os.getpid(), signal.SIGTERM)
        return train(self, batch, batch_idx)

    def killed_after_step_30(self, outputs, batch, batch_idx):  # the task's hook runs after the callbacks'
        batch_end(self, outputs, batch, batch_idx)
        if self.global_step == 30:
            raise Interrupted

    for patch, error, saved_step in [("training_step", Preempted, 30), ("on_train_batch_end", Interrupted, 20)]:
        monkeypatch.setattr(task, patch, {"training_step": signalled_in_step_30,
                                          "on_train_batch_end": killed_after_step_30}[patch])
        with pytest.raises(error):
            cli(*args)
        monkeypatch.setattr(task, patch, {"training_step": train, "on_train_batch_end": batch_end}[patch])
        stopped = max(reference.parent.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        assert torch.load(stopped / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_step, patch
        resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)
        assert resumed == stopped
        expected, got = final_state(reference), final_state(resumed)
        assert all(torch.equal(expected[k], got[k]) for k in expected), patch
        assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text(), patch


def frequent_checkpoints(folder: Path, every: int) -> str:
    """defaults.yaml with the newest state saved every `every` training steps, so kills land mid-epoch."""
    path = folder / "defaults.yaml"
    path.write_text(DEFAULTS.read_text().replace("every_n_train_steps: 100", f"every_n_train_steps: {every}"))
    return str(path)


def checkpoint_mark(last: Path) -> tuple[str, int] | None:
    try:
        return os.path.realpath(last), os.stat(last).st_mtime_ns
    except FileNotFoundError:
        return None


def process_of_rank(run: subprocess.Popen, rank: int) -> int:
    """The pid of DDP rank `rank` (> 0) of a litlab job: the child Lightning started with LOCAL_RANK set."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == run.pid and f"LOCAL_RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no rank {rank} process under {run.pid}")


def kill_and_resume(tmp_path: Path, experiment: str, flags: list[str], signals: list[int], every: int,
                    seed: int, to: list[str] | None = None, cli=None) -> list[str]:
    """Run the recipe once uninterrupted (in this process through `cli`, the `cli` fixture, where
    given: a one-process run needs no process of its own to be the reference, and each start is
    seconds of imports); run it again, stopping it with each of `signals` in turn
    at a seeded random moment after it has saved a checkpoint, and resuming it with
    `--ckpt_path last` (a SIGKILL goes to the whole job; another signal to its main process, or as
    `to` says: "group", every process of the job, as SLURM sends it; "rank 1", that DDP process
    alone); then return how each stop went. The caller's assertion is the end: the
    final weights and metrics.csv must equal the uninterrupted run's."""
    name = {"cnn_augment": "digits-cnn-augment", "simclr": "digits-simclr"}[experiment]
    base = ["fit", "--config", frequent_checkpoints(tmp_path, every), "--config", str(DIGITS / f"{experiment}.yaml"),
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}

    lives = iter(range(100))

    def start(cwd: Path, *extra: str) -> subprocess.Popen:
        # A session of its own, so a SIGKILL takes the whole job (every DDP process) as a dead node would.
        # Its messages go to a file: a pipe nobody reads until the end would fill up and block it.
        log = (tmp_path / f"life{next(lives)}.log").open("w+")
        run = subprocess.Popen([str(Path(sys.executable).with_name("litlab")), *base, *extra], cwd=cwd, env=env,
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, text=True,
                               start_new_session=True)
        run.log = log
        return run

    def stderr(run: subprocess.Popen) -> str:
        run.log.seek(0)
        return run.log.read()

    (tmp_path / "reference").mkdir()
    if cli is not None:
        os.chdir(tmp_path / "reference")
        reference_run = Path(cli(*base).trainer.log_dir).resolve()
        os.chdir(tmp_path)
    else:
        reference = start(tmp_path / "reference")
        assert reference.wait(timeout=400) == 0, stderr(reference)[-3000:]
        reference_run = tmp_path / "reference" / "runs" / name / "version_0"

    chain = tmp_path / "chain"
    chain.mkdir()
    last = chain / "runs" / name / "version_0" / "checkpoints" / "last.ckpt"
    rng = random.Random(seed)
    outcomes = []
    for signum, target in zip(signals, to or ["main"] * len(signals)):
        before = checkpoint_mark(last)
        run = start(chain, *(["--ckpt_path=last"] if before else []))
        while checkpoint_mark(last) == before and run.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.5))
        if run.poll() is not None:
            outcomes.append("finished before the stop")
            break
        if signum == signal.SIGKILL:
            os.killpg(run.pid, signal.SIGKILL)
        elif target == "group":
            os.killpg(run.pid, signum)  # every process of the job, loader workers included
        elif target.startswith("rank "):
            os.kill(process_of_rank(run, int(target.split()[1])), signum)
        else:
            run.send_signal(signum)  # to the main process, as a scheduler does; it stops the others
        code = run.wait(timeout=120)
        if signum != signal.SIGKILL:
            # One line that says where the run is saved and the command that resumes it.
            assert code == (130 if signum == signal.SIGINT else 143), stderr(run)[-3000:]
            line = stderr(run).strip().splitlines()[-1]
            assert line.startswith("litlab: stopped by a signal at step"), line
            assert "Resume it with: litlab fit" in line and line.endswith("last.ckpt"), line
        outcomes.append(f"{signal.Signals(signum).name} at step {torch.load(last, weights_only=True)['global_step']}"
                        + (f" to {target}" if signum != signal.SIGKILL and target != "main" else ""))
    final = start(chain, "--ckpt_path=last")
    assert final.wait(timeout=400) == 0, stderr(final)[-3000:]

    expected, got = final_state(reference_run), final_state(last.parent.parent)
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert expected.keys() == got.keys() and not different, (outcomes, different)
    assert (last.parent.parent / "metrics.csv").read_text() == (reference_run / "metrics.csv").read_text(), outcomes
    print(outcomes)
    return outcomes


@pytest.mark.slow
def test_a_fit_killed_and_preempted_at_random_moments_resumes_bit_identical(tmp_path, cli):
    # Per-sample augmentation in two worker processes, dropout, a cosine schedule; 20 steps an epoch.
    # A Ctrl-C (SIGINT) is a preemption by hand: it stops, saves and resumes as SIGTERM does.
    signals = [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGKILL]
    flags = ["--trainer.max_epochs=6", "--data.num_workers=2", "--model.backbone.dropout=0.2"]
    outcomes = kill_and_resume(tmp_path, "cnn_augment", flags, signals, every=5, seed=0, cli=cli)
    assert [o.split()[0] for o in outcomes] == ["SIGKILL", "SIGTERM", "SIGINT", "SIGUSR1", "SIGKILL"], outcomes


@pytest.mark.slow
def test_simclr_killed_at_random_moments_resumes_bit_identical(tmp_path, cli):
    # Two views augmented on the device from the DataModule's generator; 10 steps an epoch.
    flags = ["--trainer.max_epochs=6", "--data.batch_size=128"]
    outcomes = kill_and_resume(tmp_path, "simclr", flags, [signal.SIGKILL] * 4, every=3, seed=1, cli=cli)
    assert len(outcomes) == 4 and all("SIGKILL" in o for o in outcomes)


@pytest.mark.slow
def test_a_ddp_fit_trains_as_one_process_does_and_killed_at_random_moments_resumes_bit_identical(tmp_path, cli):
    # Two gloo processes, each with its own half of every global batch of 64 and a loader worker
    # that augments each sample. The chain's uninterrupted two-process run is also the one that
    # must train as one process with the same seed and global batch: each process takes every
    # other sample of the epoch's order, so together they see what one process sees, batch for
    # batch, with the same augmentation. For that comparison:
    # - an even number of training samples: otherwise DistributedSampler repeats one sample to
    #   even the processes' shares, which one process would not;
    # - batch norm off: on CPUs torch cannot synchronise it (sync_batchnorm needs GPUs), and
    #   statistics over each process's half of a batch differ from those over the whole batch;
    # - no dropout: each process draws its own masks, as it must;
    # - float64, so that the comparison is tight: in float32 the different summation order is
    #   amplified over the steps (Adam and ReLU/max-pool switching) to about 1e-3 after 2 epochs.
    same = ["--trainer.max_epochs=2", "--data.batch_scope=global", "--data.batch_size=64", "--data.val_fraction=0.126",
            "--model.backbone.batch_norm=false", "--trainer.precision=64-true", "--data.num_workers=1"]
    ddp = ["--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2"]
    # SIGKILL to the whole job, as a dead node; SIGTERM to the whole process group, as SLURM and cloud
    # schedulers send it before they kill a job; then to the second process alone: every process
    # stops at the step they agree on.
    outcomes = kill_and_resume(tmp_path, "cnn_augment", [*same, *ddp], [signal.SIGKILL, signal.SIGTERM, signal.SIGTERM],
                               every=3, seed=2, to=["group", "group", "rank 1"])
    assert [o.split()[0] for o in outcomes] == ["SIGKILL", "SIGTERM", "SIGTERM"], outcomes

    (tmp_path / "one").mkdir()
    os.chdir(tmp_path / "one")
    single = cli("fit", "--config", str(DIGITS / "cnn_augment.yaml"), *same)
    assert len(single.datamodule.train_dataset) % 2 == 0
    expected = final_state(Path(single.trainer.log_dir))
    got = final_state(tmp_path / "reference" / "runs" / "digits-cnn-augment" / "version_0")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)  # the same keys, each tensor close


@pytest.mark.slow
def test_a_resumed_fit_continues_its_run_directory_and_its_wandb_run(litlab, wandb_run, tmp_path):
    # Subprocesses: W&B keeps process-wide settings that an earlier in-process run would leave behind.
    mlp = str(DIGITS / "mlp.yaml")
    quiet = ["--trainer.enable_progress_bar=false"]
    assert litlab("fit", "--config", mlp, "--trainer.max_epochs=1", *quiet).returncode == 0
    # A second epoch: a change of the run's length, which a resume takes only when told to.
    resumed = litlab("fit", "--config", mlp, "--trainer.max_epochs=2", "--ckpt_path=last", "--allow_changes=true", *quiet)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # mlp.yaml's cosine schedule was sized for one epoch: the line says it is not stretched to two.
    assert ("The learning-rate schedule is not re-planned for the new length (trainer.max_epochs): it keeps the steps "
            "it was planned with.") in resumed.stdout + resumed.stderr
    changes = yaml.safe_load((tmp_path / "runs" / "digits-mlp" / "version_0" / "changes.yaml").read_text())
    assert changes == [{"step": 20, "changed": {"trainer.max_epochs": {"from": 1, "to": 2}}}]
    assert [p.name for p in (tmp_path / "runs" / "digits-mlp").iterdir()] == ["version_0"]
    first, second = sorted((tmp_path / "runs" / "wandb").glob("offline-run-*"))
    run_id = (tmp_path / "runs" / "digits-mlp" / "version_0" / "wandb_id").read_text()
    assert first.name.endswith(run_id) and second.name.endswith(run_id)  # one W&B run, synced as one
    steps = [row["trainer/global_step"] for row in wandb_run(second)["history"] if "val/acc" in row]
    assert steps == [39]  # the step axis continues: epoch 1 ends at step 39, not 19
