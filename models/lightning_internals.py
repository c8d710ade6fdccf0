"""The few things litlab reads from Lightning that Lightning's public API does not offer.

Exact resume needs to know how far into its epoch a run is, live and in a saved checkpoint;
Lightning keeps that in its loops' progress counters and writes them under the checkpoint's
`loops` entry, with no public accessor for either. Everything litlab reads of them is here, so an
upgrade that moves them breaks one module, and `tests/models/test_lightning_internals.py`
checks each against the installed Lightning and names what moved.
"""

import lightning as L

FIT_PROGRESS = ("loops", "fit_loop", "epoch_loop.batch_progress")  # where a checkpoint keeps the epoch's progress


def batches_processed(trainer: L.Trainer) -> int:
    """Training batches of the current epoch whose step has run, counted as Lightning's
    resumable-loader protocol counts them."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def saved_epoch_complete(checkpoint: dict) -> bool:
    """Whether `checkpoint` (a loaded Lightning checkpoint) was saved once its epoch's training
    batches were all done, rather than in the middle of the epoch; True for files that carry no
    loop state (weights only)."""
    progress = checkpoint
    for key in FIT_PROGRESS:
        progress = progress.get(key, {}) if isinstance(progress, dict) else {}
    return bool(progress.get("is_last_batch", True))
