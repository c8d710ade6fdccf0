"""The few things litlab reads from Lightning that Lightning's public API does not offer.

Exact resume needs to know how far into its epoch a run is; Lightning keeps that in its loops'
progress counters, with no public accessor. Everything litlab reads of them is here, so an
upgrade that moves them breaks one module, and `tests/models/test_lightning_internals.py`
checks each against the installed Lightning and names what moved.
"""

import lightning as L


def batches_processed(trainer: L.Trainer) -> int:
    """Training batches of the current epoch whose step has run, counted as Lightning's
    resumable-loader protocol counts them."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed
