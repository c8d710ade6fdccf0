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

from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from datamodules.samples import TensorSamples
from models.contract import Batch


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


class Resumable:
    """What a training loader that Lightning resumes mid-epoch keeps: the epoch and the samples of
    its order already trained on. `batches_done()` says how many batches of the current epoch this
    process has trained on, or None once the epoch is complete."""

    sampler: EpochOrder
    batch_size: int
    batches_done: Callable[[], int | None]

    def state_dict(self) -> dict[str, int]:
        batches = self.batches_done()
        if batches is None:
            return {"epoch": self.sampler.epoch + 1, "samples": 0}
        return {"epoch": self.sampler.epoch, "samples": batches * self.batch_size * self.sampler.num_replicas}

    def load_state_dict(self, state: dict[str, int]) -> None:
        # Counted in samples of the epoch's order, so a run may resume on another number of processes.
        self.sampler.set_epoch(state["epoch"])
        self.sampler.start = state["samples"]


class ResumableLoader(Resumable, DataLoader):
    """A DataLoader over `sampler`'s order that Lightning resumes mid-epoch (`Resumable`)."""

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


class DeviceBatches:
    """Batches sliced from samples held as tensors on the model's device, in `sampler`'s order: what a
    DataLoader over the same samples and sampler yields, batch for batch, without its per-batch
    machinery or a copy to the device each step. The samples are moved to `device` once."""

    # As on a DataLoader, which Lightning takes this for: it sets `sampler`'s epoch each epoch.
    batch_sampler = None

    def __init__(self, dataset: TensorSamples, sampler: Sampler, batch_size: int, device: torch.device) -> None:
        self.dataset = dataset  # as a DataLoader's: the samples served, where they were
        self.fields = {name: t.to(device) for name, t in dataset.fields.items()}
        self.sampler, self.batch_size, self.device = sampler, batch_size, device

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long, device=self.device)
        for index in order.split(self.batch_size):
            yield {name: t[index] for name, t in self.fields.items()}


class ResumableDeviceBatches(Resumable, DeviceBatches):
    """`DeviceBatches` over a training epoch's order (`EpochOrder`) that Lightning resumes mid-epoch."""

    def __init__(self, dataset: TensorSamples, sampler: EpochOrder, batch_size: int, device: torch.device,
                 batches_done: Callable[[], int | None]) -> None:
        super().__init__(dataset, sampler, batch_size, device)
        self.batches_done = batches_done
