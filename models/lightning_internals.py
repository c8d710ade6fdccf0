"""The few things litlab reads from Lightning that Lightning's public API does not offer.

Exact resume needs to know how far into its epoch a run is; Lightning keeps that in its loops'
progress counters, with no public accessor. Its W&B logger hands wandb a setting wandb warns
about at every run. Everything litlab reads or changes of them is here, so an upgrade that
moves them breaks one module, and `tests/models/test_lightning_internals.py` checks each
against the installed Lightning and names what moved.
"""

import lightning as L


def batches_processed(trainer: L.Trainer) -> int:
    """Training batches of the current epoch whose step has run, counted as Lightning's
    resumable-loader protocol counts them."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def leave_wandb_defaults(logger) -> None:
    """Lightning's WandbLogger passes wandb.init `anonymous=None` when the setting is not given;
    wandb takes None as set and warns, at every run, that the setting is deprecated. Where it
    is None, the setting is left out, as if never named."""
    if "anonymous" in logger._wandb_init and logger._wandb_init["anonymous"] is None:
        del logger._wandb_init["anonymous"]
