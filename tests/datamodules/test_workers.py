"""Loader workers of a multi-process run start from a fork server: the same batches, and the
stop signals a scheduler sends to the whole job leave them running until the trainer stops."""

import os
import signal
import subprocess
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from datamodules import Augmentation, DigitsDataModule
from datamodules.workers import start_server, start_worker, worker_context


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def fork_server(started: bool = True) -> int | None:
    """The pid of this process's fork server (None, when `started` is False, if it has none yet)."""
    for pid in children(os.getpid()):
        if b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    if started:
        raise AssertionError("no fork server under this process")
    return None


def test_one_process_forks_its_workers_and_one_of_several_starts_them_from_a_fork_server():
    assert worker_context(1) is None
    assert worker_context(2).get_start_method() == "forkserver"


@pytest.mark.slow  # starts a fork server and its worker processes
def test_workers_from_the_fork_server_give_the_forked_workers_batches_and_outlive_a_stop_signal(monkeypatch):
    # Augmented in the worker: the batches depend on each worker's seed, drawn from the loader's generator.
    data = DigitsDataModule(augment=Augmentation(rotation=8, crop_padding=1), num_workers=1, batch_size=128)
    data.setup("fit")
    forked = [batch["input"] for batch in data._loader(data.train_dataset)]

    monkeypatch.setattr(DigitsDataModule, "world_size", 2)  # as a process of a two-process run
    start_server(data.world_size)
    served = iter(data._loader(data.train_dataset))
    first = next(served)["input"]
    # A scheduler's stop reaches every process of the job, the server included.
    server = fork_server()
    os.kill(server, signal.SIGTERM)
    os.kill(server, signal.SIGUSR1)
    time.sleep(0.3)
    rest = [batch["input"] for batch in served]  # a worker whose server had died would end the epoch in an error
    os.kill(server, 0)  # still there
    assert len(forked) == len(rest) + 1 > 2
    assert all(torch.equal(a, b) for a, b in zip(forked, [first, *rest]))


def test_a_worker_ends_when_its_trainer_is_killed_though_its_parent_is_the_fork_server():
    # PyTorch's worker watches its parent, here the server: a trainer killed outright (SIGKILL, the
    # out-of-memory killer) would leave it, and with it the server, running for ever.
    trainer = subprocess.Popen(["sleep", "120"])
    # Workers that an earlier test's loader left to end on their own are not this test's.
    before = set(children(server)) if (server := fork_server(started=False)) is not None else set()
    loader = DataLoader(TensorDataset(torch.arange(64.0)), batch_size=8, num_workers=1,
                        multiprocessing_context=worker_context(2), worker_init_fn=partial(start_worker, trainer=trainer.pid))
    batches = iter(loader)
    next(batches)
    (worker,) = set(children(fork_server())) - before
    trainer.kill()
    trainer.wait()
    for _ in range(100):
        if not Path(f"/proc/{worker}").exists() or " Z " in Path(f"/proc/{worker}/stat").read_text():
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the worker outlived its trainer")
    # The loader it served fails rather than waits: "exited unexpectedly", or, where a batch it had
    # sent is still to be read, the refused connection to fetch that batch's shared memory from it,
    # or that connection closed mid-handshake as the worker ended (EOFError).
    with pytest.raises((RuntimeError, ConnectionError, EOFError)):
        list(batches)


@pytest.mark.slow  # starts a fork server and its worker processes
def test_the_fork_server_and_its_workers_import_the_datasets_without_lightning():
    # Every process of a multi-process run starts a server, and the server a worker each epoch:
    # what they import delays the first batch of every epoch. A worker re-runs the main script of
    # the process that asked for it (multiprocessing's safe import of __main__), here the `litlab`
    # console script, then unpickles its dataset (the digits' here).
    import pickle
    import sys

    data = DigitsDataModule(augment=Augmentation(rotation=8), num_workers=1)
    data.setup("fit")
    script = ("import pickle, runpy, sys; import datamodules.worker_server\n"
              f"runpy.run_path({str(Path(sys.executable).with_name('litlab'))!r}, run_name='__mp_main__')\n"
              "dataset = pickle.loads(sys.stdin.buffer.read()); dataset[0]\n"
              "print(sorted(m for m in ('lightning', 'transformers', 'wandb', 'sklearn') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], input=pickle.dumps(data.train_dataset),
                          capture_output=True, timeout=120)
    assert done.returncode == 0 and done.stdout.decode().strip() == "[]", done.stderr.decode()[-2000:]
