"""Saves and restores every global random generator with each checkpoint, per process, so a
resumed fit draws the same dropout masks and other random numbers as the run it continues.

Lightning checkpoints hold the model, optimizer, schedulers, loops and callbacks, but not the
random state of Python, NumPy and torch (CPU and CUDA). The state is stored as plain numbers and
tensors, one entry per rank, so checkpoints still load with weights_only=True. The data's own
draws (order, per-sample augmentation) depend only on seed and epoch (`datamodules/sampling.py`);
the on-device augmentation generator is kept by the DataModule's state_dict.
"""

import random
from typing import Any

import lightning as L
import numpy as np
import torch

from models.run_state import gather_per_rank, own_state


class RandomState(L.Callback):
    """Lightning saves what `state_dict` returns in every checkpoint and hands it to `load_state_dict` on resume."""

    def __init__(self) -> None:
        self.trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.trainer = trainer  # Lightning calls setup before it restores a checkpoint

    def state_dict(self) -> dict[str, Any]:
        version, state, gauss = random.getstate()
        kind, keys, position, has_gauss, cached = np.random.get_state()
        mine = {
            "python": {"version": version, "state": list(state), "gauss": gauss},
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                      "has_gauss": int(has_gauss), "cached": float(cached)},
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        return {"ranks": gather_per_rank(self.trainer, mine)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restore(own_state(self.trainer, state.get("ranks", state)))

    @staticmethod
    def _restore(state: dict[str, Any]) -> None:
        python = state["python"]
        random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["cached"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
