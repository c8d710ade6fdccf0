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

# The datasets a worker unpickles, the transforms they apply and the image readers, with torch
# and torchvision: not Lightning, which a worker never uses (a dataset of a module that needs it
# still works, its worker importing that module on its own).
for module in ("datamodules.samples", "datamodules.transforms", "datamodules.inputs", "datamodules.workers"):
    importlib.import_module(module)

if any(frame.filename == forkserver.__file__ and frame.name == "main" for frame in traceback.extract_stack()):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
