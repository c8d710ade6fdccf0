"""The datasets a loader worker holds, and what they call: kept free of Lightning, so that the
fork server of a multi-process run (`datamodules.worker_server`) and its workers import torch and
torchvision alone, not the training stack.

`TensorSamples` holds samples as tensors and slices whole batches; `subset` and `hide_targets`
take samples out or hide their labels; `Transformed` applies an image transform per sample,
seeded by (seed, epoch, index) where it draws.
"""

from collections.abc import Callable

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from models.contract import IGNORE_INDEX, Batch
from models.run_state import derived_seed


class TensorSamples(Dataset):
    """Samples held as tensors of equal length, one per field: {"input": (N, ...), "target": (N,)}.

    `__getitems__` slices a whole batch at once; with `whole_batch` as the collate function
    the loader then does no per-sample indexing or stacking.
    """

    def __init__(self, **fields: torch.Tensor) -> None:
        lengths = {len(t) for t in fields.values()}
        if len(lengths) != 1:
            raise ValueError(f"every field needs the same length; got {({k: len(t) for k, t in fields.items()})}.")
        self.fields = fields

    def __len__(self) -> int:
        return len(next(iter(self.fields.values())))

    def __getitem__(self, i: int) -> Batch:
        return {name: t[i] for name, t in self.fields.items()}

    def __getitems__(self, index: list[int]) -> Batch:
        index = torch.as_tensor(index)
        return {name: t[index] for name, t in self.fields.items()}

    def subset(self, index: torch.Tensor) -> "TensorSamples":
        return TensorSamples(**{name: t[index] for name, t in self.fields.items()})


def whole_batch(batch: Batch) -> Batch:
    return batch


def subset(dataset: Dataset, index: torch.Tensor) -> Dataset:
    """The samples of `dataset` at `index`: its own kind where it knows how to take a subset
    (`dataset.subset(index)`), which keeps its attributes (such as the training epoch), else a torch Subset."""
    if len(index) == len(dataset) and torch.equal(index, torch.arange(len(dataset))):
        return dataset  # every sample, in order (all labels kept): nothing to copy or re-encode
    if hasattr(dataset, "subset"):
        return dataset.subset(index)
    return Subset(dataset, index.tolist())


def join(first: Dataset, second: Dataset) -> Dataset:
    """`first`'s samples, then `second`'s: one TensorSamples where both are, else a torch ConcatDataset."""
    if isinstance(first, TensorSamples) and isinstance(second, TensorSamples) and first.fields.keys() == second.fields.keys():
        return TensorSamples(**{name: torch.cat([t, second.fields[name]]) for name, t in first.fields.items()})
    return ConcatDataset([first, second])


def targets_of(dataset: Dataset) -> torch.Tensor:
    """The `target` of every sample, read from the tensor where the samples are tensors."""
    if isinstance(dataset, TensorSamples) and "target" in dataset.fields:
        return dataset.fields["target"]
    return torch.as_tensor([int(dataset[i]["target"]) for i in range(len(dataset))])


class HiddenTargets(Dataset):
    """`dataset` with the target of the samples at `hidden` positions replaced by IGNORE_INDEX."""

    def __init__(self, dataset: Dataset, hidden: torch.Tensor) -> None:
        self.dataset, self.hidden = dataset, set(hidden.tolist())

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Batch:
        sample = self.dataset[i]
        return {**sample, "target": torch.tensor(IGNORE_INDEX)} if i in self.hidden else sample


def hide_targets(dataset: Dataset, hidden: torch.Tensor) -> Dataset:
    if isinstance(dataset, TensorSamples):
        target = dataset.fields["target"].clone()
        target[hidden] = IGNORE_INDEX
        return TensorSamples(**{**dataset.fields, "target": target})
    return HiddenTargets(dataset, hidden)


def rows_as_sequence(x: torch.Tensor) -> torch.Tensor:
    """An image, or a batch of them, read row by row: (..., C, H, W) -> (..., C * H, W)."""
    return x.flatten(-3, -2)


def as_fields(x: torch.Tensor | tuple[torch.Tensor, ...], view: Callable | None) -> Batch:
    """Transformed image(s) as batch fields: one image is `input`, several views are `views`."""
    if isinstance(x, tuple):
        return {"views": [view(v) if view else v for v in x]}
    return {"input": view(x) if view else x}


class Transformed(Dataset):
    """Samples with `transform`, then `view`, applied to their image; other fields pass through.

    With a `seed`, a sample's random draws are seeded by (seed, epoch, index): the same in any
    worker process or rank and in a resumed run (the training loader sets `epoch`).
    """

    def __init__(self, dataset: Dataset, transform: Callable, view: Callable | None, seed: int | None = None) -> None:
        self.dataset, self.transform, self.view, self.seed = dataset, transform, view, seed
        self.epoch = 0

    @property
    def epoch(self) -> int:
        return self._epoch

    @epoch.setter
    def epoch(self, epoch: int) -> None:
        # Samples that draw something of their own per epoch (a caption among several) see it too.
        self._epoch = epoch
        if hasattr(self.dataset, "epoch"):
            self.dataset.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Batch:
        sample = dict(self.dataset[i])
        image = sample.pop("input")  # replaced by `views` when the recipe makes several
        if self.seed is None:
            return {**sample, **as_fields(self.transform(image), self.view)}
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left as it was
            torch.default_generator.manual_seed(derived_seed(self.seed, self.epoch, i))
            image = self.transform(image)
        return {**sample, **as_fields(image, self.view)}
