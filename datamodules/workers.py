"""How loader workers start.

A process training alone forks them, as PyTorch does by default: fast, and the dataset is shared
rather than copied. A process of a multi-process run does not. It carries the process group's own
threads (gloo's and NCCL's), and a fork copies into the child whatever lock one of those threads
held at that moment, with no thread left to release it: now and then a worker waits on it forever
before it starts, and the whole job with it, since every process waits for the stuck one at its
next step. (Python 3.12 warns of forks in threaded processes; 3.14 makes the fork server its
default on Linux.) Such a process starts its workers from a fork server instead: one clean process
per training process, started by `start_server()` while the run sets itself up, which has imported
what the workers need and forks each of them on request.

Every worker leaves stopping to its trainer (`start_worker`): it ignores the stop signals a
scheduler sends to every process of a job, so that the trainer can finish its step and save, and
it exits as soon as its trainer has ended, however that one ended. PyTorch's own check, that the
worker's parent still lives, cannot see a killed trainer when the parent is the fork server. The
server ignores the job's stop signals too (see `datamodules.worker_server`), and ends once its
trainer and its workers have.
"""

import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing.context import BaseContext

SERVER_MODULE = "datamodules.worker_server"


def worker_context(world_size: int) -> BaseContext | None:
    """The multiprocessing context loader workers start from: None (PyTorch's default, a fork)
    for a process training alone, the fork server for one of several."""
    if world_size == 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        return None
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([SERVER_MODULE])
    return context


def start_server(world_size: int) -> None:
    """Start this process's fork server now, so that its imports overlap the rest of the run's
    start-up instead of delaying the first batch (it is started once per process)."""
    if worker_context(world_size) is not None:
        from multiprocessing import forkserver

        forkserver.ensure_running()


def start_worker(worker_id: int, trainer: int) -> None:
    """A loader worker's first step (its `worker_init_fn`): ignore SIGTERM and SIGINT, which the
    trainer stops on, and end this worker when the trainer process `trainer` ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_after, args=(trainer,), name="litlab_trainer_watch", daemon=True).start()


def _exit_after(trainer: int) -> None:
    try:
        ended = os.pidfd_open(trainer)  # readable the moment that process ends (Linux)
    except ProcessLookupError:
        os._exit(0)  # ended already
    except (AttributeError, OSError):  # no process descriptors here: ask once a second
        while _alive(trainer):
            time.sleep(1.0)
        os._exit(0)
    select.select([ended], [], [])
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
