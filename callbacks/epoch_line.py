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
        # Called after the epoch's validation, so its metrics are in; rank zero speaks for all.
        if not trainer.is_global_zero or not (self.always or not sys.stdout.isatty()):
            return
        metrics = {name: float(value) for name, value in trainer.callback_metrics.items()
                   if isinstance(value, torch.Tensor) and value.numel() == 1}
        of = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        shown = "  ".join(f"{name} {value:.4g}" for name, value in sorted(metrics.items()))
        print(f"epoch {trainer.current_epoch + 1}{of} step {trainer.global_step}: {shown}", flush=True)
