import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from datamodules.transforms import Augmentation, BatchAugment, per_sample_transform

EVERYTHING = dict(rotation=20.0, horizontal_flip=True, crop_padding=2, resized_crop_scale=(0.5, 1.0), color_jitter=0.4)
IDENTITY = ([0.0], [1.0])  # normalisation that leaves [0, 1] values as they are, so outputs compare exactly


def images(shape: tuple[int, ...], uint8: bool = False, low: float = 0.0, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if uint8:
        return torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    return low + (1 - low) * torch.rand(shape, generator=generator)


def per_sample(recipe: Augmentation, batch: torch.Tensor, mean=IDENTITY[0], std=IDENTITY[1], seed: int = 0):
    """Apply the per-sample transform to each image of `batch`, as a DataLoader would, and stack."""
    torch.manual_seed(seed)
    transform = per_sample_transform(recipe, mean, std, train=True)
    outputs = [transform(image) for image in batch]
    if isinstance(outputs[0], tuple):
        return tuple(torch.stack(view) for view in zip(*outputs))
    return torch.stack(outputs)


def on_device(recipe: Augmentation, batch: torch.Tensor, mean=IDENTITY[0], std=IDENTITY[1], seed: int = 0):
    return BatchAugment(recipe, mean, std)(batch, train=True, generator=torch.Generator().manual_seed(seed))


PATHS = pytest.mark.parametrize("path", [per_sample, on_device], ids=["per_sample", "on_device"])


@PATHS
def test_seeded_runs_repeat_and_other_seeds_differ(path):
    recipe, batch = Augmentation(**EVERYTHING), images((8, 3, 16, 16), uint8=True)
    first = path(recipe, batch, seed=0)
    assert torch.equal(first, path(recipe, batch, seed=0))
    assert not torch.allclose(first, path(recipe, batch, seed=1))


@PATHS
def test_horizontal_flip_gives_the_image_or_its_exact_mirror(path):
    batch = images((32, 1, 5, 7))
    out = path(Augmentation(horizontal_flip=True), batch)
    same = [torch.equal(o, x) for o, x in zip(out, batch)]
    mirrored = [torch.equal(o, x.flip(-1)) for o, x in zip(out, batch)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


@PATHS
def test_crop_padding_shifts_content_by_whole_pixels_and_brings_in_zeros(path):
    p, batch = 2, images((32, 2, 8, 8), low=0.5)  # no zeros of its own, so every zero came from the padding
    out = path(Augmentation(crop_padding=p), batch)
    padded = F.pad(batch, (p, p, p, p))  # (B, C, 8 + 2p, 8 + 2p)
    offsets = []
    for o, source in zip(out, padded):
        matches = [(top, left) for top in range(2 * p + 1) for left in range(2 * p + 1)
                   if torch.equal(o, source[:, top : top + 8, left : left + 8])]
        assert len(matches) == 1, "the output is not the image shifted by at most p whole pixels"
        offsets += matches
    assert len(set(offsets)) > 5 and (out == 0).any()


@PATHS
def test_large_rotation_turns_an_image_and_zero_rotation_leaves_it(path):
    batch = images((8, 1, 9, 13), low=0.5)
    turned = path(Augmentation(rotation=90.0), batch)
    assert all(not torch.allclose(t, x, atol=1e-3) for t, x in zip(turned, batch))
    assert (turned == 0).any()  # corners rotate in from outside the image, as zeros
    assert torch.equal(path(Augmentation(rotation=0.0), batch), batch)


@PATHS
def test_resized_crop_keeps_the_size_and_zooms_in(path):
    batch = images((8, 3, 12, 20))
    out = path(Augmentation(resized_crop_scale=(0.2, 0.5)), batch)
    assert out.shape == batch.shape and out.dtype == torch.float32
    assert all(not torch.allclose(o, x, atol=1e-3) for o, x in zip(out, batch))


@PATHS
@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_changes_colours_within_the_normalised_range(path, channels):
    mean, std = [0.4] * channels, [0.2] * channels
    batch = images((16, channels, 6, 6))
    out = path(Augmentation(color_jitter=0.9), batch, mean, std)
    plain = (batch - 0.4) / 0.2
    low, high = (0 - 0.4) / 0.2, (1 - 0.4) / 0.2
    assert out.min() >= low - 1e-5 and out.max() <= high + 1e-5
    assert (out - plain).abs().amax(dim=(1, 2, 3)).min() > 0.01  # every image changed


@PATHS
@pytest.mark.parametrize("channels", [1, 3])
def test_colour_jitter_varies_brightness_contrast_and_saturation(path, channels):
    def grey_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grey = TF.rgb_to_grayscale(x) if channels == 3 else x  # (B, 1, H, W)
        level = grey.mean(dim=(1, 2, 3))
        return level, grey.std(dim=(1, 2, 3)) / level, (x - grey).abs().mean(dim=(1, 2, 3)) / level

    # Mid-grey values and a mild strength, so no clamping hides the factors. Brightness moves
    # the level; contrast scales the spread about the level; saturation scales colour against
    # the grey image, and only for RGB.
    batch = 0.2 + 0.3 * images((32, channels, 8, 8))
    (level, spread, colour), (level_out, spread_out, colour_out) = map(
        grey_stats, (batch, path(Augmentation(color_jitter=0.3), batch))
    )
    assert (level_out / level - 1).abs().max() > 0.05
    assert (spread_out / spread - 1).abs().max() > 0.05
    if channels == 3:
        assert ((colour_out / colour) / (spread_out / spread) - 1).abs().max() > 0.05


@pytest.mark.parametrize("recipe", [None, Augmentation(**EVERYTHING, views=3)], ids=["none", "full"])
def test_eval_is_deterministic_plain_normalisation(recipe):
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    batch = images((4, 3, 8, 8), uint8=True)
    expected = (batch / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    transform, module = per_sample_transform(recipe, mean, std, train=False), BatchAugment(recipe, mean, std)
    for _ in range(2):
        assert torch.allclose(torch.stack([transform(image) for image in batch]), expected, atol=1e-6)
        assert torch.allclose(module(batch, train=False), expected, atol=1e-6)


@PATHS
def test_views_are_independent_augmentations_of_the_same_image(path):
    batch = images((4, 3, 10, 10), uint8=True)
    first, second = path(Augmentation(**EVERYTHING, views=2), batch)
    assert first.shape == second.shape == batch.shape
    assert all(not torch.allclose(a, b) for a, b in zip(first, second))
    assert isinstance(path(Augmentation(**EVERYTHING, views=1), batch), torch.Tensor)


@pytest.mark.parametrize("train", [True, False])
def test_on_device_recipes_leave_samples_to_the_batch(train):
    image = images((3, 8, 8), uint8=True)
    assert per_sample_transform(Augmentation(on_device=True), [0.5], [0.2], train=train)(image) is image


@pytest.mark.parametrize(
    ("shape", "uint8"), [((256, 3, 32, 32), True), ((256, 1, 8, 8), False)], ids=["uint8-rgb-32", "float-grey-8"]
)
def test_on_device_and_per_sample_paths_agree_in_kind(shape, uint8):
    channels = shape[1]
    mean, std = [0.45] * channels, [0.25] * channels
    recipe, batch = Augmentation(**EVERYTHING), images(shape, uint8=uint8)
    ours, theirs = on_device(recipe, batch, mean, std), per_sample(recipe, batch, mean, std)
    assert ours.shape == theirs.shape == shape and ours.dtype == theirs.dtype == torch.float32
    assert ours.device == batch.device
    assert ours.min() == pytest.approx(theirs.min().item(), abs=0.05)
    assert ours.max() == pytest.approx(theirs.max().item(), abs=0.05)
    # Each image draws its own parameters, so 256 images leave the statistics a few hundredths apart.
    assert ours.mean() == pytest.approx(theirs.mean().item(), abs=0.15)
    assert ours.std() == pytest.approx(theirs.std().item(), abs=0.15)


def test_normalising_with_the_data_statistics_gives_zero_mean_unit_std():
    channels = [images((256, 8, 8), seed=1) * 0.5, images((256, 8, 8), seed=2) ** 2, images((256, 8, 8), seed=3)]
    batch = torch.stack(channels, 1)  # (B, 3, 8, 8), each channel with its own statistics
    mean, std = batch.mean(dim=(0, 2, 3)).tolist(), batch.std(dim=(0, 2, 3)).tolist()
    for out in (BatchAugment(None, mean, std)(batch, train=False),
                torch.stack([per_sample_transform(None, mean, std, train=False)(image) for image in batch])):
        assert torch.allclose(out.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
        assert torch.allclose(out.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-5)
    # One value serves every channel.
    single = BatchAugment(None, [0.5], [0.5])(batch, train=False)
    assert torch.allclose(single, batch * 2 - 1, atol=1e-6)


def test_statistics_follow_the_module_and_stay_out_of_checkpoints():
    module = BatchAugment(Augmentation(), [0.5, 0.5, 0.5], [0.2, 0.2, 0.2])
    assert module.state_dict() == {}
    assert {name for name, _ in module.named_buffers()} == {"mean", "std"}  # moved by .to(device)


@pytest.mark.parametrize(
    ("field", "value"),
    [("views", 0), ("rotation", -5.0), ("rotation", 270.0), ("crop_padding", -1), ("color_jitter", -0.1),
     ("color_jitter", 1.5), ("resized_crop_scale", (0.6, 0.3)), ("resized_crop_scale", (0.0, 0.5)),
     ("resized_crop_scale", (0.5, 1.2))],
)
def test_bad_recipe_values_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"augment.{field} must"):
        Augmentation(**{field: value})


def test_bad_statistics_are_refused():
    with pytest.raises(ValueError, match="std must be positive"):
        BatchAugment(None, [0.5], [0.0])
    with pytest.raises(ValueError, match="one value per channel"):
        per_sample_transform(None, [0.5, 0.5], [0.2], train=True)


def test_a_large_batch_is_augmented_in_one_go():
    batch = images((1024, 3, 32, 32), uint8=True)
    first, second = on_device(Augmentation(**EVERYTHING, views=2), batch, [0.5] * 3, [0.25] * 3)
    assert first.shape == second.shape == batch.shape


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_are_augmented_on_the_gpu_and_repeat_with_the_seed():
    module = BatchAugment(Augmentation(**EVERYTHING, views=2), [0.5] * 3, [0.25] * 3).to("cuda")
    batch = images((64, 3, 32, 32), uint8=True).cuda()
    runs = [module(batch, train=True, generator=torch.Generator("cuda").manual_seed(seed)) for seed in (0, 0, 1)]
    assert runs[0][0].device.type == "cuda" and module.mean.device.type == "cuda"
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
