"""What every DataModule shares, whatever the modality: seeded splits, label fractions,
batch sizes across devices, and loaders that serve named-field batches.

A subclass implements `load()`, returning its raw `Splits` as datasets of samples (dicts
with the fields of `models.contract.Batch`), and may override `transform()` to turn
raw samples into what a model reads. This base carves the validation split when the data
has none, keeps `label_fraction` of the training labels (seeded, stratified where there
are labels), and either drops the rest or keeps them with their target hidden.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from models.contract import IGNORE_INDEX, Batch
from datamodules.samples import TensorSamples, hide_targets, join, subset, targets_of, whole_batch
from datamodules.sampling import DeviceBatches, EachOnce, EpochOrder, ResumableDeviceBatches, ResumableLoader
from datamodules.workers import start_server, start_worker, worker_context
from models.run_state import batches_done, run_seed
from models.errors import ConfigError

Unlabelled = Literal["drop", "keep"]
MIN_LABELS_PER_CLASS = 5  # a label_fraction keeping fewer of some class warns
BatchScope = Literal["device", "global"]


def split_index(
    n: int, fraction: float, seed: int, labels: torch.Tensor | None = None, held_out: tuple[str, str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of positions 0..n-1 into (`fraction` of them, the rest), both sorted.

    With `labels` the split is stratified and keeps at least one sample of every class, where
    there are enough samples for both sides to hold every class. `held_out` names the split the
    rest becomes and the setting that sizes it (("validation", "data.val_fraction")): with labels,
    a rest too small to hold one sample of each class is then refused in one line.
    """
    index = torch.arange(n)
    if fraction >= 1.0:
        return index, index[:0]
    if held_out is not None:
        name, setting = held_out
        least = int(labels.max()) + 1 if labels is not None else 1
        rest = n - max(round(fraction * n), least)
        classes = len(labels.unique()) if labels is not None else 0
        if rest < max(classes, 1):
            why = f"fewer than the {classes} classes, so not one of each" if classes else "so nothing to evaluate on"
            raise ConfigError(
                f"The {name} split would hold {rest} of {n} samples, {why}; raise {setting}, or give more data."
            )
    if labels is None:
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        keep = max(round(fraction * n), 1)
        return order[:keep].sort().values, order[keep:].sort().values
    keep = max(round(fraction * n), int(labels.max()) + 1)
    counts = labels.unique(return_counts=True)[1]  # of the classes present
    if n - keep < len(counts) or int(counts.min()) < 2:
        # Too few samples to give both sides every class (a handful of images): split at random.
        return split_index(n, fraction, seed)
    from sklearn.model_selection import train_test_split  # only a labelled split needs it, not every start-up

    kept, rest = train_test_split(index.numpy(), train_size=keep, stratify=labels.numpy(), random_state=seed)
    return torch.as_tensor(sorted(kept)), torch.as_tensor(sorted(rest))


def fold_index(n: int, folds: int, fold: int, seed: int, labels: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(training, validation) positions of fold `fold` of a seeded `folds`-fold split of 0..n-1,
    stratified by `labels` where given: each position validates in exactly one fold."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if labels is not None:
        least = int(labels.unique(return_counts=True)[1].min())
        if least < folds:
            raise ConfigError(f"data.folds={folds} needs at least {folds} samples of every class to stratify the folds, "
                              f"and some class has {least}; lower data.folds, or give more data.")
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    y = labels.numpy() if labels is not None else None
    train, val = list(splitter.split(torch.zeros(n, 1).numpy(), y))[fold]
    return torch.as_tensor(train), torch.as_tensor(val)


@dataclass
class Splits:
    """What `load()` returns: raw datasets of samples, and the training labels where there are
    any (they stratify the splits). With `val` None a validation split is carved from `train`."""

    train: Dataset
    test: Dataset
    val: Dataset | None = None
    labels: torch.Tensor | None = None


class DataModule(L.LightningDataModule):
    """The base of litlab's DataModules; implements the data contract (`models/contract.py`).

    test_fraction: the share of all samples held out for testing, for data without a test split
        of its own (None: the data has one); val_fraction is then a share of all samples too.
    label_fraction: the share of training samples whose label is used (seeded, stratified).
    folds, fold: K-fold cross-validation: the training and validation samples together are cut
        into `folds` seeded folds (stratified where there are labels); fold `fold` (0 to folds - 1)
        validates and the others train. The test split is untouched; val_fraction is not used.
    unlabelled: what happens to the others: `drop` leaves them out of training; `keep` trains on
        them with their target set to IGNORE_INDEX (for tasks that learn without labels, such as
        distillation); they are always in `unlabelled_dataset`.
    batch_size: per device by default; with `batch_scope: global` it is the batch of all devices
        together, divided by the number of processes (it must divide evenly).
    num_workers: loader processes for samples read or augmented one by one. Samples held as tensors
        (`TensorSamples`: the digits, MNIST and CIFAR without augmentation, tokenized text) are
        instead, with num_workers 0, moved to the model's device once and served as batches sliced
        there (`DeviceBatches`), in the same order as a DataLoader would serve them.
    """

    num_classes: int | None = None
    vocab_size: int | None = None

    def __init__(
        self,
        val_fraction: float = 0.1,
        test_fraction: float | None = None,
        label_fraction: float = 1.0,
        unlabelled: Unlabelled = "drop",
        batch_size: int = 64,
        batch_scope: BatchScope = "device",
        num_workers: int = 0,
        seed: int = 0,
        folds: int | None = None,
        fold: int = 0,
    ) -> None:
        super().__init__()
        if folds is not None and (type(folds) is not int or folds < 2):
            raise ConfigError(f"data.folds must be a whole number of at least 2 (or null: no cross-validation); got {folds!r}.")
        if folds is not None and not 0 <= fold < folds:
            raise ConfigError(f"data.fold must be from 0 to data.folds - 1 = {folds - 1}; got {fold}.")
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be between 0 and 1 (exclusive); got {val_fraction}.")
        if test_fraction is not None and not 0.0 < test_fraction < 1.0:
            raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive); got {test_fraction}.")
        if test_fraction is not None and val_fraction + test_fraction >= 1.0:
            raise ConfigError(
                f"val_fraction + test_fraction must leave data to train on; got {val_fraction} + {test_fraction}."
            )
        if not 0.0 < label_fraction <= 1.0:
            raise ConfigError(f"label_fraction must be in (0, 1]; got {label_fraction}.")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {batch_size}.")
        if unlabelled not in ("drop", "keep"):
            raise ConfigError(f"unlabelled must be 'drop' or 'keep'; got {unlabelled!r}.")
        if batch_scope not in ("device", "global"):
            raise ConfigError(f"batch_scope must be 'device' or 'global'; got {batch_scope!r}.")
        if num_workers < 0:
            raise ConfigError(f"num_workers must be 0 (load in the main process) or more; got {num_workers}.")
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.label_fraction = label_fraction
        self.unlabelled = unlabelled
        self.batch_size = batch_size
        self.batch_scope = batch_scope
        self.num_workers = num_workers
        self.seed = seed
        self.folds, self.fold = folds, fold
        self._with_reference = False

    # ---- the contract ----

    @property
    def example_input(self) -> torch.Tensor:
        """Two samples of model input, for the dry run that sizes lazy layers."""
        raise NotImplementedError(f"{type(self).__name__} must define example_input.")

    # ---- what a subclass provides ----

    def load(self) -> Splits:
        raise NotImplementedError(f"{type(self).__name__} must define load().")

    def transform(self, dataset: Dataset, train: bool) -> Dataset:
        """Raw samples -> model-ready samples; `train` selects training-time augmentation."""
        return dataset

    # ---- splits ----

    def setup(self, stage: str | None = None) -> None:
        if self.num_workers:
            start_server(self.world_size)
        if not hasattr(self, "train_dataset"):
            self._split()
        if stage == "fit":
            self._report_batch_size()

    def _split(self) -> None:
        splits = self.load()
        train, labels, val = splits.train, splits.labels, splits.val
        if self.folds is not None:
            if val is not None:  # the validation split joins the folds
                labels = None if labels is None else torch.cat([labels, targets_of(val)])
                train, val = join(train, val), None
            index, val_index = fold_index(len(train), self.folds, self.fold, self.seed, labels)
            rank_zero_info(f"Fold {self.fold} of {self.folds}: {len(val_index)} of {len(train)} samples validate, "
                           "the rest train; the test split is untouched.")
            train, val = subset(train, index), subset(train, val_index)
            labels = None if labels is None else labels[index]
        if val is None:
            index, val_index = split_index(len(train), 1.0 - self.val_fraction, self.seed, labels,
                                           held_out=("validation", "data.val_fraction"))
            train, val = subset(train, index), subset(train, val_index)
            labels = None if labels is None else labels[index]
        if labels is None and self.label_fraction < 1.0:
            raise ConfigError(
                f"label_fraction applies to labelled data; {type(self).__name__} has no labels, so leave it at 1."
            )
        labelled, unlabelled = split_index(len(train), self.label_fraction, self.seed, labels)
        if self.label_fraction < 1.0:
            counts = labels[labelled].unique(return_counts=True)[1]
            kept = (f"label_fraction {self.label_fraction} keeps {len(labelled)} of {len(train)} training labels "
                    f"({int(counts.min())} to {int(counts.max())} per class; at least one of each class)")
            if int(counts.min()) < MIN_LABELS_PER_CLASS:
                rank_zero_warn(f"{kept}: fewer than {MIN_LABELS_PER_CLASS} of some class, too few to learn it "
                               "reliably; raise data.label_fraction, or leave it at 1 to train on every label.")
            else:
                rank_zero_info(f"{kept}.")
        self.labelled_dataset = subset(train, labelled)  # raw labelled samples, e.g. for a reference set
        # The samples whose labels label_fraction set aside, for semi-supervised recipes.
        aside = subset(train, unlabelled)
        if labels is not None:
            aside = hide_targets(aside, torch.arange(len(unlabelled)))
        self.unlabelled_dataset = self.transform(aside, train=True)
        keep = self.unlabelled == "keep" and len(unlabelled) > 0
        fit = hide_targets(train, unlabelled) if keep else self.labelled_dataset
        self.train_dataset = self.transform(fit, train=True)
        self.val_dataset = self.transform(val, train=False)
        self.test_dataset = self.transform(splits.test, train=False)

    # ---- batch size across devices ----

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def device_batch_size(self) -> int:
        if self.batch_scope == "device":
            return self.batch_size
        if self.batch_size % self.world_size:
            raise ConfigError(
                f"A global batch_size of {self.batch_size} does not divide among {self.world_size} processes; "
                f"choose a multiple of {self.world_size}, or batch_scope: device."
            )
        return self.batch_size // self.world_size

    def _report_batch_size(self) -> None:
        # Contrastive negatives and the right learning rate depend on the global batch, not the per-device one.
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        # The training samples each process sees (a stream's are endless).
        share = -(-len(self.train_dataset) // self.world_size) if hasattr(self.train_dataset, "__len__") else None
        device = self.device_batch_size if share is None else min(self.device_batch_size, share)
        total = device * self.world_size * accumulate
        capped = (f" (batch_size {self.device_batch_size} is more than the {share} training samples of each process, "
                  "so every epoch is one batch of them)" if device < self.device_batch_size else "")
        rank_zero_info(
            f"Global batch size {total} = {device} per device x {self.world_size} "
            f"process(es) x {accumulate} accumulated batch(es){capped}."
        )
        if self.trainer is not None:
            for logger in self.trainer.loggers:
                logger.log_hyperparams({"global_batch_size": total})

    # ---- loaders ----

    def request_reference_set(self) -> None:
        """Serve the labelled training samples, untransformed for training (no augmentation), as
        validation dataloader 0 before the validation set (then dataloader 1): a reference set
        for monitors such as a k-NN vote, sampled, placed and cast by the trainer."""
        self._with_reference = True

    def _loader(self, dataset: Dataset, sampler: Sampler | None = None, kind: type = DataLoader, **kwargs) -> DataLoader:
        return kind(
            dataset,
            batch_size=self.device_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            # Workers start anew each epoch from the dataset as it is then; persistent workers
            # would carry state across epochs that no checkpoint holds.
            persistent_workers=False,
            pin_memory=torch.cuda.is_available(),
            collate_fn=whole_batch if isinstance(dataset, TensorSamples) else None,
            # Worker seeds come from the loader's own generator: loading never draws from the
            # global one, which dropout and the task's other draws then have to themselves.
            generator=torch.Generator().manual_seed(self.seed),
            worker_init_fn=partial(start_worker, trainer=os.getpid()) if self.num_workers else None,
            multiprocessing_context=worker_context(self.world_size) if self.num_workers else None,
            **kwargs,
        )

    def _on_device(self, dataset: Dataset) -> bool:
        """Whether `dataset`'s batches are sliced on the model's device rather than loaded (see num_workers)."""
        return isinstance(dataset, TensorSamples) and self.num_workers == 0

    @property
    def _device(self) -> torch.device:
        return self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")

    def _exact(self, dataset: Dataset) -> DataLoader | DeviceBatches:
        """Under several processes, every sample is evaluated exactly once. Lightning's default
        sampler pads the last batches by repeating samples, which would count them twice in a
        metric; `EachOnce` leaves the processes a sample apart instead."""
        sampler = None
        if self.world_size > 1:
            sampler = EachOnce(dataset, num_replicas=self.world_size, rank=self.trainer.global_rank)
        if self._on_device(dataset):
            return DeviceBatches(dataset, sampler or SequentialSampler(dataset), self.device_batch_size, self._device)
        return self._loader(dataset, sampler)

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        rank = self.trainer.global_rank if self.trainer is not None else 0
        order = EpochOrder(self.train_dataset, self.world_size, rank, shuffle=True, seed=run_seed())
        done = lambda: batches_done(self.trainer)  # noqa: E731
        if self._on_device(self.train_dataset):
            loader = ResumableDeviceBatches(self.train_dataset, order, self.device_batch_size, self._device, done)
        else:
            loader = self._loader(self.train_dataset, order, ResumableLoader, batches_done=done)
        if getattr(self, "_resume_position", None) is not None:
            loader.load_state_dict(self._resume_position)  # once: later loaders start their epoch at 0
            self._resume_position = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict:
        """Where in its epoch the training loader is (see `datamodules/sampling.py`)."""
        loader = getattr(self, "_train_loader", None)
        return {} if loader is None else {"position": loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = state.get("position")

    def val_dataloader(self) -> DataLoader | Sequence[DataLoader]:
        val = self._exact(self.val_dataset)
        if not self._with_reference:
            return val
        if not hasattr(self, "reference_dataset"):  # built on first use: most tasks never ask for it
            self.reference_dataset = self.transform(self.labelled_dataset, train=False)
        return [self._loader(self.reference_dataset), val]

    def test_dataloader(self) -> DataLoader:
        return self._exact(self.test_dataset)

    # ---- prediction ----

    predict_names: list[str] | None = None  # what each new input is called (a file, a text), once read_inputs ran

    def read_inputs(self, path: str) -> None:
        """Predict on the new inputs `path` names instead of the test split (`litlab predict --inputs`)."""
        raise ConfigError(
            f"{type(self).__name__} cannot read new inputs to predict on; leave out --inputs to predict on its test split."
        )

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset)
