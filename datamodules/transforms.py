"""Augmentation recipes, applied per sample in the DataLoader or per batch on the model's device.

`per_sample_transform` builds the recipe from torchvision.transforms.v2 for a Dataset.
`BatchAugment` applies the same kinds of augmentation to a whole batch with tensor ops, so
an accelerator does the work instead of DataLoader workers; each sample still gets its own
random parameters. Both finish with normalisation, so a model sees the same kind of input
whichever path a recipe picks.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from models.errors import ConfigError

# RandomResizedCrop's default aspect-ratio range; the batched path draws from the same one.
ASPECT_RATIO = (3 / 4, 4 / 3)


@dataclass
class Augmentation:
    """An augmentation recipe, chosen in YAML under a DataModule's `augment:` key.

    rotation: max degrees; each image is rotated uniformly in [-rotation, rotation].
    horizontal_flip: flip left-right with probability 0.5.
    crop_padding: zero-pad by this many pixels, then randomly crop back to the original size.
    resized_crop_scale: RandomResizedCrop's area range, output at the original size.
    color_jitter: brightness, contrast and saturation strength (0 = off); saturation only
        for 3-channel images.
    views: > 1 gives that many independently augmented views of each image.
    on_device: augment whole batches on the model's device (BatchAugment) instead of per sample.
    """

    rotation: float = 0.0
    horizontal_flip: bool = False
    crop_padding: int = 0
    resized_crop_scale: tuple[float, float] | None = None
    color_jitter: float = 0.0
    views: int = 1
    on_device: bool = False

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ConfigError(f"augment.views must be at least 1 (1 = a single view); got {self.views}.")
        if not 0.0 <= self.rotation <= 180.0:
            raise ConfigError(f"augment.rotation must be between 0 and 180 degrees; got {self.rotation}.")
        if self.crop_padding < 0:
            raise ConfigError(
                f"augment.crop_padding must be 0 (off) or a positive pixel count; got {self.crop_padding}."
            )
        if not 0.0 <= self.color_jitter <= 1.0:
            raise ConfigError(f"augment.color_jitter must be between 0 (off) and 1; got {self.color_jitter}.")
        if self.resized_crop_scale is not None:
            # jsonargparse may hand over a list; a tuple keeps the recipe hashable and printable.
            self.resized_crop_scale = tuple(self.resized_crop_scale)
            bounds = self.resized_crop_scale
            if len(bounds) != 2 or not 0.0 < bounds[0] <= bounds[1] <= 1.0:
                raise ConfigError(
                    "augment.resized_crop_scale must be two area fractions [low, high] with "
                    f"0 < low <= high <= 1, or null to turn it off; got {list(bounds)}."
                )


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> None:
    if len(mean) != len(std) or len(mean) == 0:
        raise ConfigError(
            f"mean and std need one value per channel (or one for all); got {list(mean)} and {list(std)}."
        )
    if min(std) <= 0:
        raise ConfigError(f"std must be positive for every channel; got {list(std)}.")


class _PerSampleAugment:
    """The train-time v2 pipeline, built for the first image's shape.

    The crops need the output size, which only the data knows, so the pipeline is built on
    the first call (and again should the shape change). A class rather than a closure, so
    DataLoader workers can pickle it.
    """

    def __init__(self, augment: Augmentation, mean: Sequence[float], std: Sequence[float]) -> None:
        self.augment = augment
        self.mean, self.std = list(mean), list(std)
        self._shape: tuple[int, ...] | None = None
        self._pipeline: v2.Compose | None = None

    def _build(self, channels: int, size: tuple[int, int]) -> v2.Compose:
        a = self.augment
        steps: list[nn.Module] = [v2.ToDtype(torch.float32, scale=True)]
        if a.resized_crop_scale is not None:
            steps.append(v2.RandomResizedCrop(size, scale=a.resized_crop_scale, ratio=ASPECT_RATIO, antialias=True))
        if a.crop_padding > 0:
            steps.append(v2.RandomCrop(size, padding=a.crop_padding))
        if a.rotation > 0:
            # Bilinear with fill=None: exactly BatchAugment's grid_sample with zeros outside. v2's
            # default fill=0 would dim the border pixels a second time through its fill mask.
            bilinear = v2.InterpolationMode.BILINEAR
            steps.append(v2.RandomRotation(a.rotation, interpolation=bilinear, fill=None))
        if a.horizontal_flip:
            steps.append(v2.RandomHorizontalFlip())
        if a.color_jitter > 0:
            saturation = a.color_jitter if channels == 3 else 0.0
            steps.append(v2.ColorJitter(brightness=a.color_jitter, contrast=a.color_jitter, saturation=saturation))
        steps.append(v2.Normalize(self.mean, self.std))
        return v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self._pipeline is None or image.shape != self._shape:
            self._shape = image.shape
            self._pipeline = self._build(image.shape[-3], (image.shape[-2], image.shape[-1]))
        views = tuple(self._pipeline(image) for _ in range(self.augment.views))
        return views if len(views) > 1 else views[0]


def per_sample_transform(
    augment: Augmentation | None, mean: Sequence[float], std: Sequence[float], train: bool
) -> Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]:
    """A Dataset transform for one (C, H, W) image, uint8 in [0, 255] or float in [0, 1].

    Returns float32 normalised images of the input's size (a tuple of `views` of them when
    training with views > 1). With `on_device` recipes it returns the image untouched, since
    BatchAugment then converts, augments and normalises on the device.
    """
    _check_stats(mean, std)
    if augment is not None and augment.on_device:
        return v2.Identity()
    if augment is None or not train:
        return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))])
    return _PerSampleAugment(augment, mean, std)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=like.device)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample each image through its own affine map `theta` (B, 2, 3); zeros come in from outside."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class BatchAugment(nn.Module):
    """The recipe of `Augmentation`, applied to a whole (B, C, H, W) batch on its device.

    Every random number comes from `generator` (the global RNG of x's device when None), so
    equally seeded generators give identical batches. No Python loop runs over samples.
    """

    def __init__(self, augment: Augmentation | None, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        _check_stats(mean, std)
        self.augment = augment
        # Non-persistent: data statistics come from the DataModule, not from checkpoints.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(
        self, x: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        x = TF.to_dtype(x, torch.float32, scale=True)
        if self.augment is None or not train:
            return self._normalize(x)
        views = tuple(self._normalize(self._augment(x, generator)) for _ in range(self.augment.views))
        return views if len(views) > 1 else views[0]

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def _augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        # The same order as the per-sample pipeline, so both paths mean the same recipe.
        a = self.augment
        if a.resized_crop_scale is not None:
            x = self._resized_crop(x, a.resized_crop_scale, generator)
        if a.crop_padding > 0:
            x = self._crop(x, a.crop_padding, generator)
        if a.rotation > 0:
            x = self._rotate(x, a.rotation, generator)
        if a.horizontal_flip:
            flip = torch.rand(len(x), generator=generator, device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if a.color_jitter > 0:
            x = self._jitter(x, a.color_jitter, generator)
        return x

    @staticmethod
    def _resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        area = _uniform(b, *scale, generator, x)
        ratio = _uniform(b, *(math.log(r) for r in ASPECT_RATIO), generator, x).exp()
        # Crop width and height as fractions of the image. RandomResizedCrop redraws crops
        # that do not fit; clamping to the image keeps this branch-free.
        crop_w = (area * ratio * h / w).sqrt().clamp(max=1.0)
        crop_h = (area / ratio * w / h).sqrt().clamp(max=1.0)
        # Crop centres in affine_grid's [-1, 1] coordinates, keeping the crop inside the image.
        centre_x = (2 * torch.rand(b, generator=generator, device=x.device) - 1) * (1 - crop_w)
        centre_y = (2 * torch.rand(b, generator=generator, device=x.device) - 1) * (1 - crop_h)
        zero = torch.zeros_like(crop_w)
        theta = torch.stack([crop_w, zero, centre_x, zero, crop_h, centre_y], dim=1).view(b, 2, 3)  # (B, 2, 3)
        return _warp(x, theta)

    @staticmethod
    def _crop(x: torch.Tensor, padding: int, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = F.pad(x, (padding, padding, padding, padding))  # (B, C, H + 2p, W + 2p)
        top = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=x.device)
        left = torch.randint(0, 2 * padding + 1, (b, 1, 1), generator=generator, device=x.device)
        rows = top + torch.arange(h, device=x.device).view(1, h, 1)  # (B, H, 1)
        cols = left + torch.arange(w, device=x.device).view(1, 1, w)  # (B, 1, W)
        batch = torch.arange(b, device=x.device).view(b, 1, 1)
        # Advanced indices split by the channel slice put their broadcast dims first.
        return padded[batch, :, rows, cols].permute(0, 3, 1, 2)  # (B, H, W, C) -> (B, C, H, W)

    @staticmethod
    def _rotate(x: torch.Tensor, degrees: float, generator: torch.Generator | None) -> torch.Tensor:
        b, _, h, w = x.shape
        angle = torch.deg2rad(_uniform(b, -degrees, degrees, generator, x))
        cos, sin = angle.cos(), angle.sin()
        zero = torch.zeros_like(cos)
        # affine_grid's coordinates span [-1, 1] on both axes; the h / w factors make the
        # rotation rigid in pixels on non-square images.
        theta = torch.stack([cos, -sin * h / w, zero, sin * w / h, cos, zero], dim=1).view(b, 2, 3)  # (B, 2, 3)
        return _warp(x, theta)

    @staticmethod
    def _jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
        def factor() -> torch.Tensor:
            return _uniform(len(x), 1 - strength, 1 + strength, generator, x).view(-1, 1, 1, 1)  # (B, 1, 1, 1)

        # The blends of torchvision's adjust_brightness / contrast / saturation, one factor per image.
        rgb = x.shape[1] == 3
        x = (x * factor()).clamp(0, 1)
        grey = TF.rgb_to_grayscale(x) if rgb else x
        x = torch.lerp(grey.mean(dim=(1, 2, 3), keepdim=True), x, factor()).clamp(0, 1)
        if rgb:
            x = torch.lerp(TF.rgb_to_grayscale(x), x, factor()).clamp(0, 1)
        return x
