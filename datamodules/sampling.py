"""The order training samples are drawn in, and the state that resumes it in the middle of an epoch.

Every draw of a training epoch is a function of (seed, epoch, position), never of what ran before:
  - the order is a permutation seeded by seed + epoch, exactly as torch's DistributedSampler draws
    it, and each process takes every world_size-th sample of it. One process with batch 2B then
    trains, batch for batch, on the samples that two processes with batch B train on together;
  - a sample's per-sample augmentation is seeded by (seed, epoch, index) (`derived_seed`), so it is
    the same whichever worker process, rank or resumed run draws it.
A resumed run therefore only needs to know how far into the epoch it was: `ResumableLoader`'s
state is the epoch and the number of samples already trained on, which it skips, without
loading them, when training continues. Lightning's protocol for resumable loaders saves that
state in the checkpoint, but applies it only to a loader built after the restore, and a task
whose schedule asks for `trainer.estimated_stepping_batches` has it built before. So the
DataModule keeps the state too (its own state is restored before any loader is built) and
hands it to the loader it builds.
"""

import os
from collections.abc import Callable

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from models.lightning_internals import batches_processed


def run_seed() -> int:
    """The seed of the run (`seed_everything`), which Lightning's own distributed sampler also uses."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def derived_seed(*keys: int) -> int:
    """A seed for one use of the run's seed, e.g. (seed, epoch, index) for one sample in one epoch.
    Python hashes a tuple of ints the same in every process; torch's CPU generator keeps 32 bits."""
    return hash(keys) & 0xFFFF_FFFF


def batches_done(trainer) -> int | None:
    """Training batches of the current epoch done so far, or None once the epoch is complete."""
    done = batches_processed(trainer)
    return None if done >= trainer.num_training_batches else done


class EpochOrder(DistributedSampler):
    """DistributedSampler's order, for any number of processes including one, that can start an
    epoch part way through. `rank` and `num_replicas` are given, so no process group is needed."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, shuffle: bool, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.start = 0  # samples of this epoch's order already trained on, by all processes together

    def order(self) -> torch.Tensor:
        """This epoch's order of every sample, padded by repeating it so it divides among the processes."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        padding = self.total_size - n
        return torch.cat([order, order.repeat(-(-padding // n))[:padding]]) if padding else order

    def __iter__(self):
        start, self.start = self.start, 0  # a resumed epoch starts late once; the next starts at 0
        return iter(self.order()[start + self.rank : self.total_size : self.num_replicas].tolist())


class EachOnce(DistributedSampler):
    """Every sample exactly once across the processes, in order: process r takes r, r + W, r + 2W, ...
    (torch's DistributedSampler pads by repeating samples, which a metric would count twice; here
    the shards differ by at most one sample, safe where no gradients are synced)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.total_size = len(dataset)
        self.num_samples = len(range(rank, self.total_size, num_replicas))

    def __iter__(self):
        return iter(range(self.rank, self.total_size, self.num_replicas))


class ResumableLoader(DataLoader):
    """A training loader that Lightning resumes mid-epoch. `batches_done()` says how many batches
    of the current epoch this process has trained on, or None once the epoch is complete."""

    def __init__(self, dataset: Dataset, sampler: EpochOrder, batches_done: Callable[[], int | None], **kwargs) -> None:
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.batches_done = batches_done

    def __iter__(self):
        epoch = self.sampler.epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch  # workers are started from this copy, seeding each sample by epoch
        if self.generator is not None:
            self.generator.manual_seed(self.sampler.seed + epoch)  # worker seeds, without touching the global generator
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        batches = self.batches_done()
        if batches is None:
            return {"epoch": self.sampler.epoch + 1, "samples": 0}
        return {"epoch": self.sampler.epoch, "samples": batches * self.batch_size * self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Counted in samples of the epoch's order, so a run may resume on another number of processes.
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["samples"]


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
        rank_zero_warn(
            f"This checkpoint holds the random state of {len(states)} process(es) and the run resumes on "
            f"{trainer.world_size if trainer is not None else 1}: it continues, but not bit for bit."
        )
        return states[0]
    return states[rank]
