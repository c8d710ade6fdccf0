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

The server belongs to the job as its workers do. It ignores the stop signals a scheduler sends
to the whole job (see `datamodules.worker_server`): the workers it forked exit when their parent
does, and the trainer finishes its step and saves before it ends, the server with it.
"""

import multiprocessing
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
