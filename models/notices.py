"""Notices of litlab's dependencies that a litlab user cannot act on, left unsaid where they start.

Lightning's trainer announces, as it is built, which hardware is there (GPU, TPU), and tips
for integrations litlab does not use; estimating a run's length, it says it loads the training
loader. Those go through Lightning's rank-zero info logger, which litlab quiets for the length
of those calls alone: Lightning's warnings, and every notice of the run itself (where it goes,
the global batch size, the model summary), still show. A deprecation inside Lightning's own
code (its pytree helper's use of torch's LeafSpec) is ignored for that module alone, as torch
ignores it in its own.
"""

import logging
import warnings
from contextlib import contextmanager

LIGHTNING_INFO = "lightning.pytorch.utilities.rank_zero"  # the logger of Lightning's rank_zero_info


@contextmanager
def without_lightning_info():
    """Lightning's info lines are dropped while the block runs; its warnings are not."""
    log = logging.getLogger(LIGHTNING_INFO)
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)


def ignore_dependency_deprecations() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning, module="lightning.pytorch.utilities._pytree")
