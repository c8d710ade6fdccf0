"""The newest state of a fit, always on disk: what `--ckpt_path last` resumes.

Lightning's ModelCheckpoint saves on a step trigger or an epoch trigger, not both, and on
exception saves whatever the exception was. `LatestCheckpoint` keeps one file, rewritten every
`every_n_train_steps` steps and at the end of every epoch (after validation, so it holds the
best checkpoint's tracking too), with `last.ckpt` linked to it; and it saves when the run is
stopped by SIGTERM or SIGUSR1 (a preemption), which Lightning raises between two steps. A
failure (a bug, a non-finite loss) saves nothing: it may leave the state half updated, and the
checkpoints written before it stay the newest.
"""

import os

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from models.errors import check_positive


class LatestCheckpoint(ModelCheckpoint):
    def __init__(
        self,
        every_n_train_steps: int = 100,
        dirpath: str | None = None,
        filename: str = "latest-epoch{epoch:03d}-step{step:06d}",
    ) -> None:
        check_positive("LatestCheckpoint", every_n_train_steps=every_n_train_steps)
        super().__init__(
            dirpath=dirpath,
            filename=filename,
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_train_steps,
            save_top_k=1,  # with no monitor: the newest file replaces the previous one
            save_last=True,  # last.ckpt, linked to the newest file
        )

    def _save_latest(self, trainer: L.Trainer) -> None:
        self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        # In an order that leaves last.ckpt naming a whole file whenever a kill comes: the new file
        # (Lightning writes it atomically), then the link (replaced atomically), then the old file
        # removed. Lightning's own order removes the old file before it relinks.
        filepath = self.format_checkpoint_name(monitor_candidates)
        previous, self.best_model_path = self.best_model_path, filepath
        self.last_model_path = os.path.join(os.path.dirname(filepath), self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)
        self._save_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            link = self.last_model_path + ".tmp"
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.basename(filepath), link)
            os.replace(link, self.last_model_path)
        if previous and previous != filepath:
            self._remove_checkpoint(trainer, previous)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict) -> None:
        """Nothing to do: every save above relinks last.ckpt."""

    @staticmethod
    def _validates_next(trainer: L.Trainer, batch_idx: int) -> bool:
        """Whether a validation runs right after this training batch. A state saved before it
        would resume past it (Lightning counts it as done), losing its metrics and its say in
        the best checkpoint; such saves wait until after the validation."""
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return True
        every = trainer.val_check_batch
        return trainer.enable_validation and every not in (None, float("inf")) and (batch_idx + 1) % every == 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if not self._validates_next(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Also when a step-triggered save just happened: that one was written before validation.
        if not trainer.sanity_checking and not trainer.fast_dev_run:
            self._save_latest(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Lightning raises SIGTERMException after a whole training step. A stop during validation,
        # or after the last batch of an epoch (whose closing hooks have not run), keeps the
        # previous save: neither can resume half done.
        last_batch = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        if isinstance(exception, SIGTERMException) and trainer.training and not last_batch and not trainer.fast_dev_run:
            self._save_latest(trainer)
