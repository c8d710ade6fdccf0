"""Multi-process training is a flag: two gloo processes on CPU through the real CLI."""

from pathlib import Path

import pytest

from experiments.cli import DEFAULTS

# Two gloo processes on the CPU, through the real command: plain ddp relaunches it.
TWO_PROCESSES = [
    "--trainer.strategy=ddp", "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.enable_progress_bar=false"
]


@pytest.mark.slow
def test_a_ddp_distillation_makes_one_run_saves_the_student_alone_and_tests_as_one_process_does(
        litlab, cli, wandb_run, tmp_path):
    # A task with a frozen second network (the teacher) on two processes. 359 test digits over two
    # processes: every one counted once, none repeated to pad a rank.
    import torch

    from models import Classifier
    from models.backbones import CNN

    torch.manual_seed(0)
    teacher = Classifier(backbone=CNN(channels=[32, 64]), num_classes=10)
    teacher.backbone.eval()(torch.zeros(2, 1, 8, 8))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    # An untrained teacher: the labels alone teach (alpha 0), so the student must still learn.
    distill = ["--config", str(DEFAULTS.parent / "digits" / "distill.yaml"), "--data.test_fraction=0.1995",
               f"--model.teacher_checkpoint={tmp_path / 'teacher.pt'}", "--model.alpha=0.0"]
    # W&B offline for the subprocess (the `cli` fixture disables it for in-process runs).
    result = litlab("fit", *distill, *TWO_PROCESSES, "--trainer.max_epochs=2", timeout=300,
                    env={"WANDB_MODE": "offline"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Global batch size 128 = 64 per device x 2 process(es)" in result.stderr + result.stdout
    # Rank zero alone speaks and writes: one summary, one CSV run, one W&B run.
    assert result.stdout.count("test/acc = ") == 1 and result.stdout.count("test/teacher_acc = ") == 1
    assert float(result.stdout.split("test/acc = ")[1].split()[0]) > 0.3  # chance 0.1; measured 0.476 in 2 epochs
    (run,) = (tmp_path / "runs" / "digits-distill").iterdir()
    (run_dir,) = (tmp_path / "runs" / "wandb").glob("offline-run-*")
    history = wandb_run(run_dir)["history"]
    assert len([row for row in history if "val/acc" in row]) == 2
    (best,) = (run / "checkpoints").glob("best-*.ckpt")
    state = torch.load(best, weights_only=True)["state_dict"]
    assert {k.split(".")[0] for k in state} == {"backbone", "head"}  # the student's, no teacher weight
    # The best checkpoint, tested by one process, gives the figures the two processes reported.
    single = cli("test", *distill, f"--ckpt_path={best}")
    assert len(single.datamodule.test_dataset) == 359
    for key in ("test/acc", "test/loss", "test/f1", "test/teacher_acc"):
        assert f"{key} = {float(single.trainer.callback_metrics[key]):.4f}" in result.stdout, key


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, flags",
    [
        # Two views per sample, negatives gathered from both processes, the online probe. (Per-sample
        # augmentation in a worker process: the DDP kill chain's uninterrupted run, tests/experiments/test_resume.py.)
        ("simclr", ["--data.batch_size=128", "--data.augment.on_device=false", "--model.projection_batch_norm=false"]),
    ],
)
def test_two_processes_with_batch_b_train_as_one_process_with_batch_2b(litlab, cli, experiment, flags):
    # The same seed and global batch: each process takes every other sample of the epoch's order,
    # so together they see what one process sees, batch for batch, with the same augmentation.
    # - an even number of training samples: otherwise DistributedSampler repeats one sample to
    #   even the processes' shares, which one process would not;
    # - batch norm off: on CPUs torch cannot synchronise it (sync_batchnorm needs GPUs), and
    #   statistics over each process's half of a batch differ from those over the whole batch;
    # - float64, so that the comparison is tight: in float32 the different summation order is
    #   amplified over the steps (Adam and ReLU/max-pool switching) to about 1e-3 after 2 epochs.
    import torch

    args = ["fit", "--config", str(DEFAULTS.parent / "digits" / f"{experiment}.yaml"), "--trainer.max_epochs=2",
            "--data.batch_scope=global", "--data.val_fraction=0.126", "--model.backbone.batch_norm=false",
            "--trainer.precision=64-true", *flags]
    single = cli(*args)
    assert len(single.datamodule.train_dataset) % 2 == 0
    one = single.trainer.log_dir
    two = litlab(*args, *TWO_PROCESSES, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    expected = torch.load(Path(one, "checkpoints", "last.ckpt"), weights_only=True)["state_dict"]
    (run,) = [p for p in Path(one).parent.glob("version_*") if str(p) != str(Path(one))]
    got = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)  # the same keys, each tensor close


@pytest.mark.slow
def test_two_nodes_launched_by_torchrun_on_one_machine_make_one_run(tmp_path):
    # Two torchrun agents, one process each, meeting on 127.0.0.1: what two cluster nodes do.
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import torch

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    # Each node writes to its own files, never to a pipe: a pipe nobody reads while the test waits
    # on the other node fills up and stops its writer, and two nodes wait on each other forever.
    logs = [(tmp_path / f"node{rank}.out", tmp_path / f"node{rank}.err") for rank in (0, 1)]
    nodes = []
    for rank, (out, err) in enumerate(logs):
        with out.open("w") as stdout, err.open("w") as stderr:
            nodes.append(subprocess.Popen(
                [str(bin_dir / "torchrun"), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={rank}",
                 "--master_addr=127.0.0.1", f"--master_port={port}", str(bin_dir / "litlab"), "fit",
                 "--config", str(DEFAULTS.parent / "digits" / "mlp.yaml"), "--trainer.num_nodes=2", "--trainer.devices=1",
                 "--trainer.max_epochs=1", *TWO_PROCESSES[:2], "--trainer.enable_progress_bar=false"],
                cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            ))
    try:
        for node in nodes:
            node.wait(timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("the two nodes did not end within 300 s; their last words:\n"
                    + "\n".join(f"node {rank}: {err.read_text()[-3000:]}" for rank, (_, err) in enumerate(logs)))
    finally:
        for node in nodes:
            node.kill()
    outputs = [(out.read_text(), err.read_text()) for out, err in logs]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert "Global batch size 128 = 64 per device x 2 process(es)" in "".join(out + err for out, err in outputs)
    assert sum(out.count("test/acc = ") for out, _ in outputs) == 1  # global rank zero alone reports
    (run,) = (tmp_path / "runs" / "digits-mlp").iterdir()
    assert len(list((tmp_path / "runs" / "wandb").glob("offline-run-*"))) == 1
    # 1,257 training digits split between the ranks: 629 each, 10 steps of 64, not 20 as on one process.
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 10
