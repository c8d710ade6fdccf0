"""Loader workers of a multi-process run start from a fork server: the same batches, and the
stop signals a scheduler sends to the whole job leave them running until the trainer stops."""

import os
import signal
import time
from pathlib import Path

import torch

from datamodules import Augmentation, DigitsDataModule
from datamodules.workers import start_server, worker_context


def fork_server() -> int:
    """The pid of this process's fork server."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if parent == os.getpid() and b"multiprocessing.forkserver" in command:
            return int(stat.parent.name)
    raise AssertionError("no fork server under this process")


def test_one_process_forks_its_workers_and_one_of_several_starts_them_from_a_fork_server():
    assert worker_context(1) is None
    assert worker_context(2).get_start_method() == "forkserver"


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
