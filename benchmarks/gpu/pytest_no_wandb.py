"""A pytest plugin for `pytest -m gpu` on a machine without wandb (the lent GPU machine has none).

tests/conftest.py runs every test with W&B offline, so a test that fits through litlab's CLI
starts W&B's logger, which needs wandb. Where wandb cannot be imported, this plugin sets
WANDB_MODE=disabled after that set-up, and litlab leaves the logger out; where it can, the
plugin changes nothing. benchmarks/gpu/measure.py loads it with `-p pytest_no_wandb`.
"""

import pytest

try:
    import wandb  # noqa: F401

    MISSING = False
except ImportError:
    MISSING = True


@pytest.fixture(autouse=True)
def wandb_disabled_where_missing(isolated, monkeypatch: pytest.MonkeyPatch) -> None:
    """After tests/conftest.py's `isolated` (named, so it runs first), which sets W&B offline."""
    if MISSING:
        monkeypatch.setenv("WANDB_MODE", "disabled")
