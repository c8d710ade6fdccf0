"""The real torchvision loading code on small datasets written in the real on-disk formats."""

import pytest
import torch
from torchvision.datasets import CIFAR10, MNIST

from datamodules import Augmentation, VisionDataModule
from models.errors import ConfigError


def loaded(**kwargs) -> VisionDataModule:
    dm = VisionDataModule(num_workers=0, **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_idx_files_are_read(datasets_on_disk, tmp_path, name, folder):
    datasets_on_disk.mnist(tmp_path, folder)
    dm = loaded(dataset=name, root=str(tmp_path))
    assert (dm.num_classes, dm.input_shape) == (10, (1, 28, 28))
    assert len(dm.classes) == 10 and dm.classes[0] in ("0 - zero", "T-shirt/top")  # torchvision's names
    assert len(dm.train_dataset) + len(dm.val_dataset) == 200 and len(dm.test_dataset) == 100
    batch = next(iter(dm.test_dataloader()))
    x, y = batch["input"], batch["target"]
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    # Each test image still has its class's square: images and labels were read in step.
    raw = dm.load().test
    images, labels = raw.fields["input"], raw.fields["target"]
    assert torch.equal(y, labels)
    for image, label in zip(images, labels):
        assert (image == datasets_on_disk.square_value(int(label))).sum() >= 49


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_pickle_batches_are_read_in_channel_order(datasets_on_disk, tmp_path, classes):
    # CIFAR-10 has five training files, CIFAR-100 one; a stratified 10% validation split needs a class each.
    per_batch = 40 if classes == 10 else 1000
    datasets_on_disk.cifar(tmp_path, classes, n_per_batch=per_batch)
    dm = loaded(dataset=f"cifar{classes}", root=str(tmp_path))
    assert (dm.num_classes, dm.input_shape) == (classes, (3, 32, 32))
    assert dm.classes == [f"class{c}" for c in range(classes)]  # the names in the meta file, in label order
    train_files = len(CIFAR10.train_list) if classes == 10 else 1
    assert len(dm.train_dataset) + len(dm.val_dataset) == train_files * per_batch and len(dm.test_dataset) == 100
    raw = dm.load().test
    images, labels = raw.fields["input"], raw.fields["target"]
    assert images.shape == (100, 3, 32, 32) and images.dtype == torch.uint8
    # The class square shows in every channel at full size: rows were split into R, G, B planes correctly.
    for image, label in zip(images, labels):
        square = (image == datasets_on_disk.square_value(int(label))).sum(dim=(1, 2))
        assert square.min() >= 9 and square.max() - square.min() < 9
    assert len(dm.mean) == len(dm.std) == 3


def test_validation_split_is_seeded_and_stratified(datasets_on_disk, tmp_path):
    datasets_on_disk.cifar(tmp_path)
    a, b = loaded(root=str(tmp_path), seed=3), loaded(root=str(tmp_path), seed=3)
    assert torch.equal(a.val_dataset.fields["input"], b.val_dataset.fields["input"])
    counts = torch.bincount(a.val_dataset.fields["target"], minlength=10)
    assert counts.min() == counts.max() == 2  # 20 validation images, 2 per class
    few = loaded(root=str(tmp_path), label_fraction=0.2)
    assert len(few.train_dataset) == 36 and len(few.unlabelled_dataset) == 144


def test_missing_dataset_names_the_folder_and_the_files(tmp_path):
    dm = VisionDataModule(dataset="mnist", root=str(tmp_path), download=False)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "train-images-idx3-ubyte" in message
    assert "download: true" in message


def test_unreachable_download_gives_the_same_kind_of_error(monkeypatch, tmp_path):
    # Port 9 on loopback refuses at once: an unreachable mirror without touching the network.
    monkeypatch.setattr(MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    for name, folder in (("mnist", tmp_path / "MNIST" / "raw"), ("cifar10", tmp_path / "cifar-10-batches-py")):
        with pytest.raises(FileNotFoundError, match="Could not download") as err:
            VisionDataModule(dataset=name, root=str(tmp_path), download=True).prepare_data()
        assert str(folder) in str(err.value)


def test_on_device_path_serves_whole_uint8_batches(datasets_on_disk, tmp_path):
    datasets_on_disk.cifar(tmp_path)
    dm = loaded(root=str(tmp_path), batch_size=32, augment=Augmentation(crop_padding=4, horizontal_flip=True, on_device=True))
    batch = next(iter(dm.train_dataloader()))
    x, y = batch["input"], batch["target"]
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (32,)
    after = dm.on_after_batch_transfer(batch, 0)
    out = after["input"]
    assert out.dtype == torch.float32 and out.shape == x.shape and torch.equal(after["target"], y)


def test_a_damaged_mnist_file_is_named_as_damaged_not_missing(datasets_on_disk, tmp_path):
    datasets_on_disk.mnist(tmp_path)
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[: 5000])  # a download cut short
    with pytest.raises(ConfigError, match=r"mnist: a file in .*MNIST/raw is damaged or not in the expected format"):
        loaded(root=str(tmp_path), dataset="mnist")


def test_a_damaged_cifar_batch_is_named(datasets_on_disk, tmp_path):
    datasets_on_disk.cifar(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(b"not a pickle" + batch.read_bytes()[100:])
    with pytest.raises(ConfigError, match=r"cifar10: data_batch_3 in .*cifar-10-batches-py is damaged"):
        loaded(root=str(tmp_path), dataset="cifar10")
