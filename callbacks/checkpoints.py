"""The newest state of a fit, always on disk: what `--ckpt_path last` resumes.

Lightning's ModelCheckpoint saves on a step trigger or an epoch trigger, not both, and on
exception saves whatever the exception was. `LatestCheckpoint` keeps one file, rewritten every
`every_n_train_steps` steps and at the end of every epoch (after validation, so it holds the
best checkpoint's tracking too), with `last.ckpt` linked to it; and it saves when the run is
stopped by SIGTERM or SIGUSR1 (a preemption), which Lightning raises between two steps, then
prints the one line that says where the run is saved and how to resume it. A failure (a bug, a
non-finite loss) saves nothing: it may leave the state half updated, and the checkpoints written
before it stay the newest.
"""

import os
import shlex
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from models.errors import check_positive

LAST = "last.ckpt"


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

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # trainer.log_dir is a collective under DDP: every rank asks here, once.
        folder = Path(self.dirpath) if self.dirpath else Path(trainer.log_dir or trainer.default_root_dir, "checkpoints")
        self.dirpath = str(folder)
        link = folder / LAST
        self.last_model_path = str(link) if link.exists() else ""

    def save(self, trainer: L.Trainer) -> None:
        """Write the newest state, then relink last.ckpt, then remove the state it replaces: in an
        order that leaves last.ckpt naming a whole file whenever a kill comes (Lightning writes the
        file atomically; the link is replaced atomically)."""
        self._pending, self._saved_step = False, trainer.global_step
        name = self.filename.format(epoch=trainer.current_epoch, step=trainer.global_step) + ".ckpt"
        path = Path(self.dirpath, name)
        trainer.save_checkpoint(path)  # on every rank: a collective under distributed strategies
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

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if trainer.fast_dev_run or step % self.every_n_train_steps or step == self._saved_step:
            return
        if trainer.is_last_batch:
            return  # the end of the epoch saves, after its validation
        if self._validates_next(trainer, batch_idx):
            self._pending = True
        else:
            self.save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and not trainer.sanity_checking and not trainer.is_last_batch:
            self.save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also when a step-triggered save just happened: that one was written before validation.
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self.save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        # Lightning raises SIGTERMException after a whole training step. A stop during validation,
        # or after the last batch of an epoch (whose closing hooks have not run), keeps the
        # previous save: neither can resume half done.
        if trainer.training and not trainer.is_last_batch and not trainer.fast_dev_run:
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
