"""The modality-neutral base on plain tensors: feature vectors with labels, token ids without.

Every sample carries an `index` field, its position in the raw training set, so the tests can
say exactly which samples landed where; the base passes fields it does not know straight through.
"""

import logging
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules import IGNORE_INDEX, Augmentation, DataModule, DigitsDataModule, Splits, TensorSamples
from datamodules.base import split_index
from datamodules.sampling import DeviceBatches
from models.errors import ConfigError

FEATURES, CLASSES = 5, 3


class ListSamples(Dataset):
    """The same samples as a plain map-style Dataset of dicts: the base's generic (non-tensor) path."""

    def __init__(self, samples: TensorSamples) -> None:
        self.samples = [samples[i] for i in range(len(samples))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


class Features(DataModule):
    """`n` random feature vectors (F,) with labels 0, 1, 2 in turn; the data is fixed, the split seed is not."""

    num_classes = CLASSES

    def __init__(self, n: int = 120, stratify: bool = True, tensors: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n, self.stratify, self.tensors = n, stratify, tensors

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, FEATURES)

    def load(self) -> Splits:
        g = torch.Generator().manual_seed(1234)
        labels = torch.arange(self.n) % CLASSES
        train = TensorSamples(input=torch.randn(self.n, FEATURES, generator=g), target=labels, index=torch.arange(self.n))
        test = TensorSamples(input=torch.randn(12, FEATURES, generator=g), target=torch.arange(12) % CLASSES, index=-1 - torch.arange(12))
        if not self.tensors:
            train, test = ListSamples(train), ListSamples(test)
        return Splits(train=train, test=test, labels=labels if self.stratify else None)


class Tokens(DataModule):
    """Token-id sequences (T,) without labels: a language-model-style dataset."""

    vocab_size = 50

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, 6, dtype=torch.long)

    def load(self) -> Splits:
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, self.vocab_size, (40, 6), generator=g)
        return Splits(
            train=TensorSamples(input=tokens, index=torch.arange(40)),
            test=TensorSamples(input=torch.randint(0, self.vocab_size, (10, 6), generator=g), index=-1 - torch.arange(10)),
        )


def ready(cls=Features, **kwargs) -> DataModule:
    dm = cls(**kwargs)
    dm.setup("fit")
    return dm


def column(dataset: Dataset, name: str) -> torch.Tensor:
    return torch.stack([torch.as_tensor(dataset[i][name]) for i in range(len(dataset))])


def served(loader: DataLoader, name: str) -> torch.Tensor:
    return torch.cat([batch[name] for batch in loader])


def stub_trainer(world_size: int, accumulate: int = 1) -> SimpleNamespace:
    logger = SimpleNamespace(logged={})
    logger.log_hyperparams = logger.logged.update
    return SimpleNamespace(
        world_size=world_size, accumulate_grad_batches=accumulate, loggers=[logger], global_rank=0, training=True,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )


# ---- split_index ----


@pytest.mark.parametrize("n, fraction", [(50, 0.8), (7, 0.5), (10, 0.01)])
def test_plain_split_is_seeded_disjoint_complete_and_sorted(n, fraction):
    kept, rest = split_index(n, fraction, seed=3)
    assert len(kept) == max(round(fraction * n), 1)
    assert torch.equal(torch.cat([kept, rest]).sort().values, torch.arange(n))  # disjoint and complete
    assert torch.equal(kept, kept.sort().values) and torch.equal(rest, rest.sort().values)
    again = split_index(n, fraction, seed=3)
    assert torch.equal(kept, again[0]) and torch.equal(rest, again[1])
    if n >= 10 and fraction < 0.9:
        assert not torch.equal(kept, split_index(n, fraction, seed=4)[0])


def test_a_held_out_split_left_empty_is_refused_by_its_setting():
    with pytest.raises(ConfigError, match=r"^The validation split would hold 0 of 3 samples, so nothing to evaluate on; "
                                          r"raise data.val_fraction, or give more data.$"):
        split_index(3, 0.9, seed=0, held_out=("validation", "data.val_fraction"))
    assert [len(side) for side in split_index(3, 0.6, seed=0, held_out=("validation", "data.val_fraction"))] == [2, 1]


def test_a_fraction_of_one_keeps_everything():
    kept, rest = split_index(9, 1.0, seed=0)
    assert torch.equal(kept, torch.arange(9)) and len(rest) == 0
    kept, rest = split_index(9, 1.0, seed=0, labels=torch.arange(9) % 3)
    assert torch.equal(kept, torch.arange(9)) and len(rest) == 0


def test_labelled_split_is_stratified_and_keeps_every_class():
    labels = torch.arange(90) % 3
    kept, rest = split_index(90, 0.2, seed=0, labels=labels)
    assert torch.bincount(labels[kept]).tolist() == [6, 6, 6]
    assert torch.equal(torch.cat([kept, rest]).sort().values, torch.arange(90))
    tiny, _ = split_index(90, 0.01, seed=0, labels=labels)  # 1 sample asked for, one per class kept
    assert torch.bincount(labels[tiny], minlength=3).tolist() == [1, 1, 1]


# ---- splits and label fractions in a DataModule ----


@pytest.mark.parametrize("tensors", [True, False], ids=["tensor_samples", "plain_dataset"])
def test_validation_split_without_labels_is_seeded_disjoint_and_complete(tensors):
    dm = ready(stratify=False, tensors=tensors, seed=5)
    train, val = column(dm.train_dataset, "index"), column(dm.val_dataset, "index")
    assert (len(train), len(val)) == (108, 12)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(120))
    assert torch.equal(val, column(ready(stratify=False, tensors=tensors, seed=5).val_dataset, "index"))
    assert not torch.equal(val, column(ready(stratify=False, tensors=tensors, seed=6).val_dataset, "index"))
    assert torch.equal(column(dm.test_dataset, "index"), -1 - torch.arange(12))  # the given test set, untouched


def test_samples_are_served_as_named_field_batches_of_any_tensors():
    dm = ready(batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input", "target", "index"}
    assert batch["input"].shape == (16, FEATURES) and batch["input"].dtype == torch.float32
    assert batch["target"].dtype == torch.long
    # Fields stay in step: each row is the raw sample its index names.
    raw = dm.load().train
    assert torch.equal(batch["input"], raw.fields["input"][batch["index"]])
    assert torch.equal(batch["target"], raw.fields["target"][batch["index"]])
    assert torch.equal(dm.example_input, torch.zeros(2, FEATURES))


@pytest.mark.parametrize("tensors", [True, False], ids=["tensor_samples", "plain_dataset"])
def test_label_fraction_keeps_a_stratified_seeded_share(tensors):
    dm = ready(label_fraction=0.25, tensors=tensors)
    labelled, unlabelled = column(dm.train_dataset, "index"), column(dm.unlabelled_dataset, "index")
    assert (len(labelled), len(unlabelled)) == (27, 81)  # 108 training samples after validation
    assert torch.bincount(column(dm.train_dataset, "target")).tolist() == [9, 9, 9]
    assert (column(dm.unlabelled_dataset, "target") == IGNORE_INDEX).all()
    everything = torch.cat([labelled, unlabelled, column(dm.val_dataset, "index")])
    assert torch.equal(everything.sort().values, torch.arange(120))
    assert torch.equal(labelled, column(ready(label_fraction=0.25, tensors=tensors).train_dataset, "index"))
    assert not torch.equal(labelled, column(ready(label_fraction=0.25, tensors=tensors, seed=1).train_dataset, "index"))
    # Validation is stratified too, and does not depend on label_fraction.
    assert torch.bincount(column(dm.val_dataset, "target")).tolist() == [4, 4, 4]
    assert torch.equal(column(dm.val_dataset, "index"), column(ready(tensors=tensors).val_dataset, "index"))


@pytest.mark.parametrize("tensors", [True, False], ids=["tensor_samples", "plain_dataset"])
def test_keeping_the_unlabelled_trains_on_all_samples_with_their_targets_hidden(tensors):
    drop = ready(label_fraction=0.25, tensors=tensors)
    keep = ready(label_fraction=0.25, unlabelled="keep", tensors=tensors)
    target, index = column(keep.train_dataset, "target"), column(keep.train_dataset, "index")
    assert len(keep.train_dataset) == 108
    hidden = target == IGNORE_INDEX
    assert int(hidden.sum()) == len(drop.unlabelled_dataset) == 81
    # The labelled samples are the very ones `drop` trains on, features and labels alike...
    assert torch.equal(index[~hidden], column(drop.train_dataset, "index"))
    assert torch.equal(target[~hidden], column(drop.train_dataset, "target"))
    assert torch.equal(column(keep.train_dataset, "input")[~hidden], column(drop.train_dataset, "input"))
    # ...and the hidden ones are the set-aside samples, whose true labels are gone.
    assert torch.equal(index[hidden], column(drop.unlabelled_dataset, "index"))
    assert torch.equal(index[hidden], column(keep.unlabelled_dataset, "index"))
    assert torch.equal(served(keep.train_dataloader(), "target").eq(IGNORE_INDEX).sum(), hidden.sum())
    # Evaluation is the same either way.
    assert torch.equal(column(keep.val_dataset, "index"), column(drop.val_dataset, "index"))


def test_token_sequences_without_labels_are_split_and_served():
    dm = ready(Tokens, batch_size=8, seed=2)
    train, val = column(dm.train_dataset, "index"), column(dm.val_dataset, "index")
    assert (len(train), len(val)) == (36, 4)
    assert torch.equal(torch.cat([train, val]).sort().values, torch.arange(40))
    assert torch.equal(val, column(ready(Tokens, seed=2).val_dataset, "index"))
    batch = next(iter(dm.train_dataloader()))
    assert batch["input"].shape == (8, 6) and batch["input"].dtype == torch.long
    assert "target" not in batch or (batch["target"] == IGNORE_INDEX).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"label_fraction": 0.0}, "label_fraction"),
        ({"label_fraction": 1.5}, "label_fraction"),
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"folds": 1}, "data.folds must be a whole number of at least 2"),
        ({"folds": 3, "fold": 3}, r"data.fold must be from 0 to data.folds - 1 = 2"),
    ],
)
def test_bad_settings_are_rejected_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        Features(**kwargs)


# ---- batch size across devices ----


def test_a_device_batch_size_is_used_as_given_on_any_number_of_devices():
    dm = Features(batch_size=30)
    assert dm.device_batch_size == 30
    dm.trainer = stub_trainer(world_size=2)
    dm.setup("fit")
    assert dm.device_batch_size == 30 and dm.train_dataloader().batch_size == 30
    assert dm.trainer.loggers[0].logged == {"global_batch_size": 60}


def test_a_global_batch_size_is_divided_among_the_processes(caplog):
    dm = Features(batch_size=32, batch_scope="global")
    dm.trainer = stub_trainer(world_size=2, accumulate=1)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert dm.device_batch_size == 16
    sizes = [len(batch["input"]) for batch in dm.train_dataloader()]
    assert sum(sizes) == 108 // 2 and set(sizes) <= {16, 54 % 16}  # this rank's half of the 108 samples
    assert dm.val_dataloader().batch_size == dm.test_dataloader().batch_size == 16
    assert dm.trainer.loggers[0].logged == {"global_batch_size": 32}
    assert "Global batch size 32 = 16 per device x 2 process(es) x 1 accumulated batch(es)" in caplog.text


def test_a_global_batch_size_on_one_real_cpu_process_is_the_device_batch_size():
    dm = Features(batch_size=33, batch_scope="global")
    assert dm.device_batch_size == 33  # no trainer: one process
    dm.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    dm.setup("fit")
    assert dm.world_size == 1 and dm.device_batch_size == 33


def test_a_global_batch_size_that_does_not_divide_is_refused_with_the_numbers():
    dm = Features(batch_size=33, batch_scope="global")
    dm.trainer = stub_trainer(world_size=2)
    with pytest.raises(ConfigError, match=r"global batch_size of 33 does not divide among 2 processes.*multiple of 2"):
        dm.device_batch_size
    with pytest.raises(ConfigError, match="33"):
        dm.setup("fit")


# ---- the reference set ----


@pytest.mark.parametrize("unlabelled", ["drop", "keep"])
def test_reference_set_is_served_first_and_holds_the_labelled_training_samples(unlabelled):
    dm = ready(label_fraction=0.5, unlabelled=unlabelled, batch_size=10)
    assert isinstance(dm.val_dataloader(), DeviceBatches)  # nothing asked for: the validation set alone
    dm.request_reference_set()
    loaders = dm.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    reference, val = loaders
    labelled = column(dm.labelled_dataset, "index")
    assert len(labelled) == 54
    assert torch.equal(served(reference, "index"), labelled)  # in order, every one once
    assert (served(reference, "target") != IGNORE_INDEX).all()
    assert torch.equal(served(reference, "target"), column(dm.labelled_dataset, "target"))
    assert torch.equal(served(val, "index"), column(dm.val_dataset, "index"))


@pytest.mark.parametrize("on_device", [False, True], ids=["per_sample", "on_device"])
def test_digits_reference_set_is_normalised_but_never_augmented(on_device):
    dm = ready(
        DigitsDataModule, label_fraction=0.5, batch_size=128,
        augment=Augmentation(crop_padding=2, horizontal_flip=True, views=2, on_device=on_device),
    )
    train = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    dm.request_reference_set()
    reference, val = dm.val_dataloader()
    batches = [dm.on_after_batch_transfer(batch, 0) for batch in reference]
    assert all("input" in batch and "views" not in batch for batch in batches)
    raw = dm.labelled_dataset.fields
    expected = (raw["input"] - dm.mean[0]) / dm.std[0]
    assert len(raw["input"]) == len(dm.train_dataset) == 628  # half of the 1,257 training images
    assert torch.allclose(torch.cat([b["input"] for b in batches]), expected, atol=1e-5)
    assert torch.equal(torch.cat([b["target"] for b in batches]), raw["target"])
    assert "views" not in dm.on_after_batch_transfer(next(iter(val)), 1)
    if not on_device:  # outside a trainer the device path only normalises; the loader path augments
        assert len(train["views"]) == 2 and train["views"][0].shape == (128, 1, 8, 8)


def test_training_batches_with_several_views_carry_views_instead_of_input():
    dm = ready(DigitsDataModule, augment=Augmentation(crop_padding=1, views=2))
    assert set(dm.train_dataset[0]) == {"views", "target"}
    assert set(next(iter(dm.train_dataloader()))) == {"views", "target"}


def test_under_several_processes_evaluation_sees_every_sample_exactly_once():
    # 12 test samples plus a validation split of 13: neither divides by 5 processes. Lightning's
    # default sampler would pad with repeats, and a metric would count those twice.
    seen = {"val": [], "test": []}
    for rank in range(5):
        dm = Features(n=130, val_fraction=0.1)
        dm.trainer = SimpleNamespace(world_size=5, global_rank=rank, accumulate_grad_batches=1, loggers=[],
                                     strategy=SimpleNamespace(root_device=torch.device("cpu")))
        dm.setup("fit")
        for stage, loader in (("val", dm.val_dataloader()), ("test", dm.test_dataloader())):
            seen[stage] += [int(i) for batch in loader for i in batch["index"]]
    assert len(dm.val_dataset) == 13
    assert sorted(seen["val"]) == sorted(int(i) for i in dm.val_dataset.fields["index"])
    assert sorted(seen["test"]) == sorted(range(-12, 0))


@pytest.mark.parametrize("n, world", [(7, 3), (8, 2), (2, 3)])
def test_each_once_gives_every_sample_to_exactly_one_process(n, world):
    from datamodules.sampling import EachOnce

    shards = [list(EachOnce(list(range(n)), num_replicas=world, rank=rank)) for rank in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))  # each sample once, none repeated as padding
    assert [len(EachOnce(list(range(n)), num_replicas=world, rank=r)) for r in range(world)] == list(map(len, shards))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("name", ["DigitsDataModule", "FolderDataModule", "TextDataModule",
                                  "TextClassificationDataModule", "CaptionedDigitsDataModule", "CaptionedFolderDataModule",
                                  "HubDataModule", "HubCaptionsDataModule"])
@pytest.mark.parametrize("fractions, message", [
    ({"test_fraction": 1.0}, "test_fraction must be between 0 and 1 (exclusive); got 1.0."),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction must leave data to train on"),
])
def test_every_datamodule_that_holds_out_its_own_test_split_checks_it_in_the_same_words(
        name, fractions, message, datasets_on_disk, tmp_path):
    import datamodules

    datasets_on_disk.image_folder(tmp_path, classes=2, per_class=2)
    folder = {"root": str(tmp_path)} if "Folder" in name else {"path": str(tmp_path)} if name.startswith("Hub") else {}
    with pytest.raises(ConfigError) as refused:
        getattr(datamodules, name)(**folder, **fractions)
    assert str(refused.value).startswith(message)


def test_a_batch_larger_than_the_training_split_is_reported_as_the_batch_it_really_is(caplog):
    dm = Features(batch_size=100000)
    dm.trainer = stub_trainer(world_size=2)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    share = -(-len(dm.train_dataset) // 2)  # 108 training samples, 54 a process
    assert f"Global batch size {2 * share} = {share} per device x 2 process(es)" in caplog.text
    assert f"batch_size 100000 is more than the {share} training samples of each process" in caplog.text
    assert dm.trainer.loggers[0].logged == {"global_batch_size": 2 * share}
    assert [len(batch["input"]) for batch in dm.train_dataloader()] == [share]


def test_a_label_fraction_says_how_many_labels_it_kept_per_class(caplog):
    dm = Features(label_fraction=0.01)  # 1% of 108 rounds to 1 label, raised to one of each of 3 classes
    with pytest.warns(UserWarning, match=r"^label_fraction 0.01 keeps 3 of 108 training labels \(1 to 1 per class; at "
                                         r"least one of each class\): fewer than 5 of some class, too few to learn it"):
        dm.setup("fit")
    dm = Features(label_fraction=0.5)
    with caplog.at_level(logging.INFO):
        dm.setup("fit")
    assert "label_fraction 0.5 keeps 54 of 108 training labels (18 to 18 per class; at least one of each class)." \
        in caplog.text


# ---- K-fold cross-validation ----


@pytest.mark.parametrize("tensors", [True, False], ids=["tensors", "list"])
def test_folds_validate_each_sample_once_stratified_and_seeded_and_leave_the_test_split_alone(tensors):
    k = 4
    folds = [ready(folds=k, fold=i, tensors=tensors) for i in range(k)]
    validated = [column(dm.val_dataset, "index") for dm in folds]
    pool = torch.cat(validated).sort().values
    assert torch.equal(pool, torch.arange(120))  # every training sample validates in exactly one fold
    for dm, val in zip(folds, validated):
        trained = column(dm.train_dataset, "index")
        assert torch.equal(torch.cat([trained, val]).sort().values, pool)  # the other folds train
        assert torch.bincount(column(dm.val_dataset, "target"), minlength=CLASSES).tolist() == [10, 10, 10]
        assert torch.equal(column(dm.test_dataset, "index"), column(ready(tensors=tensors).test_dataset, "index"))
    assert torch.equal(column(ready(folds=k, fold=1, tensors=tensors).val_dataset, "index"), validated[1])  # seeded
    assert not torch.equal(column(ready(folds=k, fold=1, seed=1, tensors=tensors).val_dataset, "index"), validated[1])


def test_folds_take_in_a_validation_split_the_data_brings_and_refuse_too_few_of_a_class():
    # The digits carve their own validation split: it joins the folds, and the test split stays as it was.
    plain = DigitsDataModule()
    plain.setup("fit")
    folded = [DigitsDataModule(folds=5, fold=i) for i in range(5)]
    for dm in folded:
        dm.setup("fit")
    assert sum(len(dm.val_dataset) for dm in folded) == len(plain.train_dataset) + len(plain.val_dataset)
    assert torch.equal(folded[0].test_dataset.fields["input"], plain.test_dataset.fields["input"])
    with pytest.raises(ConfigError, match="data.folds=50 needs at least 50 samples of every class"):
        ready(n=120, folds=50)


# ---- samples held as tensors, served from the device ----


@pytest.mark.parametrize("world_size", [1, 2])
def test_samples_held_as_tensors_are_served_from_the_device_as_a_loader_serves_them_and_resume_alike(world_size):
    on_device, loaded = Features(batch_size=16), Features(batch_size=16, tensors=False)  # tensors, or one by one
    for dm in (on_device, loaded):
        dm.trainer = stub_trainer(world_size)
        dm.setup("fit")
    fast, slow = on_device.train_dataloader(), loaded.train_dataloader()
    assert isinstance(fast, DeviceBatches) and isinstance(slow, DataLoader) and len(fast) == len(slow)

    def same(a, b) -> bool:
        a, b = list(a), list(b)
        return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x) for x, y in zip(a, b))

    for epoch in (0, 1):  # Lightning sets each sampler's epoch
        fast.sampler.set_epoch(epoch), slow.sampler.set_epoch(epoch)
        assert same(fast, slow)
    # Resumed two batches into epoch 1, as a checkpoint says.
    fast.load_state_dict({"epoch": 1, "samples": 32 * world_size}), slow.load_state_dict({"epoch": 1, "samples": 32 * world_size})
    assert same(fast, slow) and len(list(iter(fast))) == len(fast)  # the next epoch starts at its beginning
    assert same(on_device.val_dataloader(), loaded.val_dataloader())
    assert same(on_device.test_dataloader(), loaded.test_dataloader())


def test_tensors_are_moved_to_the_models_device_once_and_loader_workers_keep_a_dataloader():
    dm = Features(batch_size=16)
    dm.trainer = stub_trainer(1)
    dm.trainer.strategy.root_device = torch.device("meta")  # shapes only: where the batches come from
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert all(t.device.type == "meta" for t in loader.fields.values())
    assert next(iter(loader))["input"].device.type == "meta"
    workers = Features(batch_size=16, num_workers=1)
    workers.trainer = stub_trainer(1)
    workers.setup("fit")
    assert isinstance(workers.train_dataloader(), DataLoader) and isinstance(workers.test_dataloader(), DataLoader)
