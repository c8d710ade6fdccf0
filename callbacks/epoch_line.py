"""One plain line of metrics per epoch, for output that is not a terminal.

A progress bar redraws one line, so a run written to a file (a SLURM `.out`, `| tee`, CI) shows
only its last epoch. Where stdout is not a terminal, `EpochLine` prints each epoch's end instead:

    epoch 3/20 step 60: train/loss 0.4121  val/acc 0.9472  val/loss 0.2013
"""

import sys

import lightning as L
import torch


class EpochLine(L.Callback):
    """`always`: print the line on a terminal too (next to the progress bar)."""

    def __init__(self, always: bool = False) -> None:
        self.always = always

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After the epoch's validation; but a task logs the epoch's training metrics in its own
        # on_train_epoch_end, which Lightning calls after this one and takes in after both: the
        # line waits for the next hook, the next epoch's start or the end of training.
        self._ended = (trainer.current_epoch + 1, trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._say(trainer)

    def _say(self, trainer: L.Trainer) -> None:
        ended, self._ended = getattr(self, "_ended", None), None
        # Rank zero speaks for all.
        if ended is None or not trainer.is_global_zero or not (self.always or not sys.stdout.isatty()):
            return
        epoch, step = ended
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if isinstance(value, torch.Tensor) and value.numel() == 1}
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        shown = "  ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))
        print(f"epoch {epoch}{of} step {step}: {shown}", flush=True)
