import pytest
import torch

from datamodules import IGNORE_INDEX, DigitsDataModule
from models.errors import ConfigError


def setup(**kwargs) -> DigitsDataModule:
    dm = DigitsDataModule(**kwargs)
    dm.setup("fit")
    return dm


def labels(dataset) -> torch.Tensor:
    return torch.stack([dataset[i]["target"] for i in range(len(dataset))])


def images(dataset) -> torch.Tensor:
    return torch.stack([dataset[i]["input"] for i in range(len(dataset))])


def test_split_is_disjoint_stratified_and_complete():
    dm = setup()
    sizes = [len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)]
    assert sum(sizes) == 1797
    assert sizes[2] == pytest.approx(0.2 * 1797, abs=1) and sizes[1] == pytest.approx(0.1 * 1797, abs=1)
    rows = torch.cat([images(dm.train_dataset), images(dm.val_dataset), images(dm.test_dataset)])
    assert len(torch.unique(rows.flatten(1), dim=0)) >= 1797 - 20  # digits has a few duplicate images
    for dataset in (dm.val_dataset, dm.test_dataset):
        share = torch.bincount(labels(dataset), minlength=10) / len(dataset)
        assert share.min() > 0.08 and share.max() < 0.12  # every class near its 10%


def test_split_depends_on_seed_only():
    a, b, c = setup(seed=1), setup(seed=1), setup(seed=2)
    assert torch.equal(images(a.test_dataset), images(b.test_dataset))
    assert not torch.equal(images(a.test_dataset), images(c.test_dataset))


def test_views_and_normalisation():
    image, sequence = setup(view="image"), setup(view="sequence")
    batch = next(iter(image.train_dataloader()))
    assert set(batch) == {"input", "target"}
    x, y = batch["input"], batch["target"]
    assert x.shape == (64, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert image.input_shape == (1, 8, 8) and sequence.input_shape == (8, 8)
    assert next(iter(sequence.train_dataloader()))["input"].shape == (64, 8, 8)
    # Row t of the sequence view is row t of the image.
    assert torch.equal(images(image.test_dataset)[:, 0], images(sequence.test_dataset))
    train = images(image.train_dataset)
    assert train.mean().abs() < 1e-4 and (train.std() - 1).abs() < 1e-3
    raw = images(setup(normalize=False).train_dataset)
    assert raw.min() == 0 and raw.max() == 1


def test_label_fraction_keeps_a_stratified_share_and_sets_the_rest_aside():
    full, few = setup(), setup(label_fraction=0.1)
    assert len(few.train_dataset) == pytest.approx(0.1 * len(full.train_dataset), abs=1)
    counts = torch.bincount(labels(few.train_dataset), minlength=10)
    assert counts.min() >= 11 and counts.max() <= 14
    assert len(few.train_dataset) + len(few.unlabelled_dataset) == len(full.train_dataset)
    assert (labels(few.unlabelled_dataset) == IGNORE_INDEX).all()  # set-aside labels are hidden
    assert torch.equal(images(few.test_dataset), images(full.test_dataset))  # evaluation unchanged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"label_fraction": 0.0}, "label_fraction"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "leave data to train on"),
        ({"test_fraction": 1.5}, "test_fraction"),
    ],
)
def test_bad_fractions_are_rejected_by_name(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DigitsDataModule(**kwargs)


def test_augmented_sequence_view_is_an_augmented_image_read_by_rows():
    from datamodules import Augmentation

    torch.manual_seed(0)
    dm = setup(view="sequence", augment=Augmentation(crop_padding=2))
    x = next(iter(dm.train_dataloader()))["input"]
    assert x.shape == (64, 8, 8)
    plain = setup(view="sequence")
    assert not torch.equal(images(dm.train_dataset), images(plain.train_dataset))  # training images move
    assert torch.equal(images(dm.test_dataset), images(plain.test_dataset))  # evaluation images do not


def test_on_device_path_yields_raw_batches_and_augments_them_after_transfer():
    from datamodules import Augmentation

    dm = setup(view="sequence", augment=Augmentation(crop_padding=1, on_device=True))
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["input"], batch["target"]
    assert x.shape == (64, 1, 8, 8) and x.min() >= 0 and x.max() <= 1  # raw, whole images
    after = dm.on_after_batch_transfer(batch, 0)  # outside a trainer: evaluation, normalise only
    assert set(after) == {"input", "target"}
    out, same_y = after["input"], after["target"]
    assert out.shape == (64, 8, 8) and torch.equal(same_y, y)
    assert (out - (x.flatten(1, 2) - dm.mean[0]) / dm.std[0]).abs().max() < 1e-5
