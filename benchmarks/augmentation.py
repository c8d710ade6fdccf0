"""Samples per second of the two augmentation paths on a CIFAR-sized generated dataset.

    .venv/bin/python benchmarks/augmentation.py [--images 20000] [--device cpu|cuda]

Both paths run the CIFAR recipe (4-pixel padded crop + horizontal flip + normalisation)
through the real DataModule code: the per-sample path in DataLoader workers
(torchvision.transforms.v2 on each image), the on-device path by slicing whole batches
from the held tensor and augmenting them in `on_after_batch_transfer`. Time covers one
epoch of batches delivered, augmented, on the device; no model runs.
"""

import argparse
import time

import torch

from datamodules.base import Splits
from datamodules.samples import TensorSamples
from datamodules.images import ImageDataModule
from datamodules.transforms import Augmentation


class Generated(ImageDataModule):
    """Random uint8 images of CIFAR's shape, held like VisionDataModule holds CIFAR."""

    num_classes = 10
    input_shape = (3, 32, 32)

    def __init__(self, images: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.images = images

    def load(self):
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (self.images, 3, 32, 32), dtype=torch.uint8, generator=generator)
        labels = torch.arange(self.images) % 10
        self.mean, self.std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
        held_out = TensorSamples(input=images[:512], target=labels[:512])
        return Splits(train=TensorSamples(input=images, target=labels), val=held_out, test=held_out, labels=labels)


def epoch_rate(dm: Generated, device: torch.device) -> float:
    dm.setup()
    loader = dm.train_dataloader()
    count, start = 0, time.perf_counter()
    for batch in loader:
        batch = dm.on_after_batch_transfer({name: t.to(device) for name, t in batch.items()}, 0)
        count += len(batch["target"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    recipe = {"crop_padding": 4, "horizontal_flip": True}
    rows = []
    for workers in (0, 2):
        dm = Generated(args.images, augment=Augmentation(**recipe), batch_size=args.batch_size, num_workers=workers)
        rows.append((f"per-sample (v2), {workers} workers", epoch_rate(dm, device)))
    dm = Generated(args.images, augment=Augmentation(**recipe, on_device=True), batch_size=args.batch_size)
    # on_after_batch_transfer reads the trainer's state; outside one, tell it this is training.
    dm.trainer = type("Training", (), {"training": True, "global_rank": 0})()
    rows.append((f"on-device (batched), on {device.type}", epoch_rate(dm, device)))
    print(f"\n{args.images} images 3x32x32, batch {args.batch_size}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n")
    print("| path | samples / s |")
    print("|---|---|")
    for name, rate in rows:
        print(f"| {name} | {rate:,.0f} |")


if __name__ == "__main__":
    main()
