"""What the fork server of `datamodules.workers` imports before it forks any worker: everything a
worker needs to load its dataset (so each worker starts in a moment), and one change of its own.

The server ignores the stop signals a scheduler sends to every process of a job (SIGTERM, and
SIGUSR1, which litlab treats as SIGTERM; it already ignores SIGINT). Killed by one, it would take
the running workers with it, since a worker exits when its parent does, before the trainer could
finish its step and save. It ends when its training process does, however that one ends.
"""

import importlib
import signal
import traceback
from multiprocessing import forkserver

importlib.import_module("datamodules")  # the DataModules, their datasets and transforms, and torch

if any(frame.filename == forkserver.__file__ and frame.name == "main" for frame in traceback.extract_stack()):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
