"""The newest state of a fit, always on disk: what `--ckpt_path last` resumes.

Lightning's ModelCheckpoint saves on a step trigger or an epoch trigger, not both, and on
exception saves whatever the exception was. `LatestCheckpoint` keeps one file, rewritten every
`every_n_train_steps` steps and at the end of every epoch (after validation, so it holds the
best checkpoint's tracking too), with `last.ckpt` linked to it. The end of an epoch is taken
where Lightning saves it, and written once the epoch's closing metrics are logged (when the
next epoch starts, or training ends), so a kill between the two cannot lose those metrics.
A step's state is likewise taken at the end of the step and written once the step's row of metrics
is logged (Lightning logs it after every on_train_batch_end hook), when the next step starts.
It stops the run when it is told to (SIGTERM or SIGUSR1, a preemption; SIGINT, a Ctrl-C): its own signal handlers only
note the signal, every process agrees at the end of each training step whether any of them
was told (one all-reduce of one number), and all of them stop at that same step boundary,
save once and print the one line that says where the run is saved and how to resume it.
Lightning's own handler is replaced while training: under DDP it broadcasts from inside the
handler, at whatever point each process happens to be, which hangs the job. A failure (a bug, a
non-finite loss) saves nothing: it may leave the state half updated, and the checkpoints written
before it stay the newest.

`AtomicCheckpointIO` writes every checkpoint of a run (these, the best ones, SLURM's) to a hidden
file in the same folder and renames it into place, so no file with a checkpoint's name is ever
cut short; a full disk is one line, and the checkpoints already on disk stay whole. It can
also hold a checkpoint in memory, serialised, until it is told to write it. (With another
CheckpointIO the end of an epoch is written at once.)
"""

import contextlib
import errno
import io
import os
import shlex
import shutil
import signal
import sys
import threading
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from models.errors import ConfigError, check_positive

LAST = "last.ckpt"


class DiskFull(ConfigError):
    """The disk ran out of space while a checkpoint was written; nothing already saved is lost."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, written whole or not at all: into `.<name>.tmp` beside
    the target, flushed to the disk, then renamed (an atomic replace on one filesystem; Lightning's
    own write goes through a temporary file elsewhere, which a full disk can leave cut short
    under the checkpoint's own name)."""

    def __init__(self) -> None:
        super().__init__()
        self._holding = False
        self._held: list[tuple[Path, io.BytesIO]] = []

    @contextlib.contextmanager
    def holding(self):
        """Checkpoints saved inside this block are serialised now and written by `write_held()`."""
        self._holding = True
        try:
            yield
        finally:
            self._holding = False

    def write_held(self) -> None:
        held, self._held = self._held, []
        for path, buffer in held:
            self._write(path, buffer)

    def drop_held(self) -> None:
        self._held = []

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        if self._holding:
            self._held.append((Path(path), buffer))
        else:
            self._write(Path(path), buffer)

    def _write(self, path: Path, buffer: io.BytesIO) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        aside = path.with_name(f".{path.name}.tmp")
        try:
            with open(aside, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(aside, path)
        except OSError as err:
            aside.unlink(missing_ok=True)
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            free = shutil.disk_usage(path.parent).free
            raise DiskFull(
                f"The disk holding {path.parent} is full: a checkpoint of {buffer.tell() / 2**20:.1f} MiB did not fit "
                f"({free / 2**20:.1f} MiB free). Free some space (or move the run), then resume it: last.ckpt still "
                "names the newest whole checkpoint."
            ) from None


def resume_command(args: list[str], checkpoint: str) -> str:
    """The command line that continues this run from `checkpoint`."""
    kept, skip = [], False
    for arg in args:
        if skip or arg.startswith("--ckpt_path="):
            skip = False
            continue
        if arg == "--ckpt_path":
            skip = True
            continue
        kept.append(arg)
    return shlex.join(["litlab", *kept, "--ckpt_path", checkpoint])


class Preempted(SIGTERMException):
    """The run stopped at a step boundary every process agreed on, because one of them was sent `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)  # SIGUSR1 arrives as SIGTERM (experiments/cli.py)


class LatestCheckpoint(L.Callback):
    def __init__(
        self,
        every_n_train_steps: int = 100,
        dirpath: str | None = None,
        filename: str = "latest-epoch{epoch:03d}-step{step:06d}",
    ) -> None:
        check_positive("LatestCheckpoint", every_n_train_steps=every_n_train_steps)
        self.every_n_train_steps = every_n_train_steps
        self.dirpath = dirpath
        self.filename = filename
        self.last_model_path = ""  # last.ckpt once anything is saved (or found, in a resumed run)
        self._pending = False  # a step save that waits for the validation right after its step
        self._saved_step = 0  # the global step last saved (steps repeat while gradients accumulate)
        self._signal = 0  # the stop signal this process received (0: none)
        self._stopping = 0  # the stop signal every process agreed on, waiting for a validation or the epoch's end
        self._held = None  # the end of an epoch, taken and not yet written: (its path, whether it was held in memory)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks here, once.
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir, "checkpoints")
        self.dirpath = str(folder)
        link = folder / LAST
        self.last_model_path = str(link) if link.exists() else ""

    def save(self, trainer: L.Trainer, hold: bool = False) -> None:
        """Write the newest state, then relink last.ckpt, then remove the state it replaces: in an
        order that leaves last.ckpt naming a whole file whenever a kill comes (the file is written
        atomically; the link is replaced atomically). With `hold`, the state is taken now and
        written by `_write_held` (a state held before it is written first)."""
        self._write_held(trainer)
        self._pending, self._saved_step = False, trainer.global_step
        name = self.filename.format(epoch=trainer.current_epoch, step=trainer.global_step) + ".ckpt"
        path = Path(self.dirpath, name)
        checkpoint_io = trainer.strategy.checkpoint_io
        if hold and isinstance(checkpoint_io, AtomicCheckpointIO):
            with checkpoint_io.holding():
                trainer.save_checkpoint(path, weights_only=False)  # on every rank: a collective under distributed strategies
            self._held = path
            return
        trainer.save_checkpoint(path, weights_only=False)
        self._link(trainer, path)

    def _write_held(self, trainer: L.Trainer) -> None:
        if self._held is not None:
            path, self._held = self._held, None
            trainer.strategy.checkpoint_io.write_held()  # rank zero holds the file; the others hold nothing
            self._link(trainer, path)

    def _link(self, trainer: L.Trainer, path: Path) -> None:
        name = path.name
        self.last_model_path = str(path.with_name(LAST))
        if trainer.is_global_zero:
            link = path.with_name(LAST + ".tmp")
            link.unlink(missing_ok=True)
            os.symlink(name, link)
            os.replace(link, path.with_name(LAST))
            prefix = self.filename.split("{", 1)[0]
            for old in path.parent.glob(f"{prefix}*.ckpt"):
                if old.name not in (name, LAST):
                    old.unlink(missing_ok=True)

    @staticmethod
    def _validates_next(trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether a validation runs right after this training batch. A state saved before it
        would resume past it (Lightning counts it as done), losing its metrics and its say in
        the best checkpoint; such saves wait until after the validation."""
        every = trainer.val_check_batch
        return trainer.enable_validation and every not in (None, float("inf")) and (batch_idx + 1) % every == 0

    # ---- stopping on a signal ----

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._signal = signal.SIGTERM if trainer.received_sigterm else 0  # a signal before training began
        self._held = None
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                signal.signal(signum, self._note)  # Lightning restores its own handlers when the run ends

    def _note(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self._signal == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now, without waiting for the step to end
        self._signal = max(self._signal, signum)

    def _agreed_stop(self, trainer: L.Trainer) -> int:
        """The stop signal any process received (SIGTERM before SIGINT), the same on every process."""
        if trainer.world_size == 1:
            return self._signal
        told = torch.tensor(self._signal, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(told, reduce_op="max"))

    def _stop(self, trainer: L.Trainer, signum: int) -> None:
        if not trainer.fast_dev_run:
            self.save(trainer)
        raise Preempted(signum)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self._write_held(trainer)  # the last step's state: its metrics are logged by now
        if self._stopping:  # told during the last step or epoch, whose end is saved: stop before a new step
            raise Preempted(self._stopping)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write_held(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_held(trainer)
        if self._stopping:  # told during the last epoch: training is complete and saved; the closing test waits
            raise Preempted(self._stopping)

    # ---- saving ----

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        # Only where an optimizer step has just been taken (the same batch on every process).
        stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or trainer.is_last_batch
        if stepped and not self._stopping and (stop := self._agreed_stop(trainer)):
            # The validation right after this step, or the epoch's end, comes first; otherwise this
            # step's state is saved once its metrics are logged, and the run stops as the next step starts.
            self._stopping = stop
            if not trainer.is_last_batch and not self._validates_next(trainer, batch_idx):
                if not trainer.fast_dev_run:
                    self.save(trainer, hold=True)
                return
        step = trainer.global_step
        if trainer.fast_dev_run or step % self.every_n_train_steps or step == self._saved_step:
            return
        if trainer.is_last_batch:
            return  # the end of the epoch saves, after its validation
        if self._validates_next(trainer, batch_idx):
            self._pending = True
        else:
            self.save(trainer, hold=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.is_last_batch:
            return
        if self._stopping:
            self._stop(trainer, self._stopping)
        if self._pending:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also when a step-triggered save just happened: that one was written before validation.
        # Lightning logs the epoch's closing metrics after every on_train_epoch_end hook: the
        # state is taken here and written at the next hook after them.
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self.save(trainer, hold=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write_held(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            self._write_held(trainer)  # an epoch's end, whole: a stop between two epochs keeps it
        elif self._held is not None:
            self._held = None  # a failure saves nothing
            trainer.strategy.checkpoint_io.drop_held()
        if not isinstance(exception, SIGTERMException):
            return
        # A Preempted stop has saved already. Lightning's own SIGTERMException (a signal before
        # training began, or while only Lightning's handler was in place) comes after a whole step;
        # a stop during validation, or after an epoch's last batch, keeps the previous save.
        if not isinstance(exception, Preempted) and trainer.training and not trainer.is_last_batch \
                and not trainer.fast_dev_run:
            self.save(trainer)
        self._say_stopped(trainer)

    @rank_zero_only
    def _say_stopped(self, trainer: L.Trainer) -> None:
        where = f"at step {trainer.global_step} (epoch {trainer.current_epoch})"
        if not self.last_model_path:
            line = f"stopped by a signal {where}, before any checkpoint was saved; run it again."
        else:
            line = (f"stopped by a signal {where}; the run is saved in {self.last_model_path}. Resume it with: "
                    f"{resume_command(sys.argv[1:], self.last_model_path)}")
        print(f"litlab: {line}", file=sys.stderr, flush=True)
