"""Run state that tasks, data and callbacks share: the run's seed and the seeds derived from it,
how far into its epoch the run is, and per-process state saved in a checkpoint.

Every draw of a run is keyed: `derived_seed(run_seed(), *key)`. The keys in `SeedKey` sit
apart from every (epoch, index) key a training sample uses (epochs and indices are never negative).
"""

import enum
import os

import torch



class SeedKey(enum.IntEnum):
    """The first key of each draw that is not a training sample's (epoch, index)."""

    LAZY_INIT = -1  # the lazy layers' initial weights
    EVAL_MASKING = -2  # a masked language model's evaluation corruption, the same every evaluation
    EVAL_CAPTIONS = -3  # the evaluation images' choice of caption


def run_seed() -> int:
    """The seed of the run (`seed_everything`), which Lightning's own distributed sampler also uses."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def derived_seed(*keys: int) -> int:
    """A seed for one use of the run's seed, e.g. (seed, epoch, index) for one sample in one epoch.
    Python hashes a tuple of ints the same in every process; torch's CPU generator keeps 32 bits."""
    return hash(keys) & 0xFFFF_FFFF


def batches_done(trainer) -> int | None:
    """Training batches of the current epoch done so far, or None once the epoch is complete."""
    from models.lightning_internals import batches_processed

    done = batches_processed(trainer)
    return None if done >= trainer.num_training_batches else done


def gather_per_rank(trainer, state):
    """Every process's `state`, in rank order. A collective: Lightning builds a checkpoint's
    contents on every rank (rank zero writes it), so every rank calls this at the same point."""
    if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [state]
    states = [None] * trainer.world_size
    torch.distributed.all_gather_object(states, state)
    return states


def own_state(trainer, states):
    """This process's entry of what `gather_per_rank` saved (the first one if the process count changed)."""
    if not isinstance(states, list):
        return states  # saved before states were kept per process
    rank = trainer.global_rank if trainer is not None else 0
    if len(states) != (trainer.world_size if trainer is not None else 1):
        from lightning.pytorch.utilities import rank_zero_warn

        rank_zero_warn(
            f"This checkpoint holds the random state of {len(states)} process(es) and the run resumes on "
            f"{trainer.world_size if trainer is not None else 1}: it continues, but not bit for bit."
        )
        return states[0]
    return states[rank]
