"""What image DataModules add to the base: normalisation, augmentation on either path, views.

A subclass's `load()` gives samples {"input": (C, H, W) uint8 or float in [0, 1], "target": label}
and sets `mean` and `std`. Training samples are augmented by the recipe, either per sample
in the loader or per batch on the model's device (`augment.on_device`); evaluation samples
are only normalised. A recipe with `views > 1` serves the field `views` instead of `input`.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict

import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import BatchScope, DataModule, Unlabelled
from datamodules.inputs import ImageFiles, LoadImage, image_inputs
from datamodules.samples import TensorSamples, Transformed, as_fields
from models.contract import Batch
from models.run_state import gather_per_rank, own_state, run_seed
from datamodules.transforms import Augmentation, BatchAugment, per_sample_transform


class ImageDataModule(DataModule):
    """Subclasses set `num_classes` and `input_shape`, and implement `load()`, which sets `mean` and `std`.

    `reshape` (None for images) turns images into what the model sees, per sample or per batch alike.
    """

    mean: Sequence[float]
    std: Sequence[float]
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init__(
        self,
        augment: Augmentation | None = None,
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
        super().__init__(
            test_fraction=test_fraction, val_fraction=val_fraction, label_fraction=label_fraction, unlabelled=unlabelled, batch_size=batch_size,
            batch_scope=batch_scope, num_workers=num_workers, seed=seed, folds=folds, fold=fold,
        )
        self.augment = augment
        self._generator: torch.Generator | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one sample as the model sees it (after `reshape`)."""
        raise NotImplementedError

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape (C, H, W) of one image as loaded, before `reshape`: new inputs are read at it."""
        if self.reshape is not None:
            raise NotImplementedError(f"{type(self).__name__} reshapes its images, so it must define image_shape.")
        return self.input_shape

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, *self.input_shape)

    def read_inputs(self, path: str) -> None:
        """Predict on the images `path` names (see `datamodules.inputs`) instead of the test split."""
        self.predict_names = image_inputs(path)

    def predict_dataloader(self) -> DataLoader:
        if self.predict_names is None:
            return super().predict_dataloader()
        channels, height, width = self.image_shape
        if height != width:
            raise NotImplementedError(f"{type(self).__name__} reads square images only; its images are {height}x{width}.")
        return self._loader(self.transform(ImageFiles(self.predict_names, LoadImage(height, channels)), train=False))

    def record_augment(self) -> None:
        """Keep the recipe in the hyperparameters as a plain dict: checkpoints then hold no
        pickled class, so they load with weights_only=True."""
        self.hparams["augment"] = None if self.augment is None else asdict(self.augment)

    @property
    def on_device(self) -> bool:
        return self.augment is not None and self.augment.on_device

    def transform(self, dataset: Dataset, train: bool) -> Dataset:
        if self.on_device:
            return dataset  # raw batches are sliced from the tensor and augmented on the device
        transform = per_sample_transform(self.augment, self.mean, self.std, train=train)
        if isinstance(dataset, TensorSamples) and not (train and self.augment is not None):
            # A fixed transform is applied to the whole tensor once; batches are then slices of it.
            fields = dataset.fields
            return TensorSamples(**{**fields, **as_fields(transform(fields["input"]), self.reshape)})
        random = train and self.augment is not None
        return Transformed(dataset, transform, self.reshape, seed=run_seed() if random else None)

    def state_dict(self) -> dict:
        # The on-device augmentation draws from its own generator, one per rank: a resumed fit continues its stream.
        if not self.on_device:
            return super().state_dict()
        mine = None if self._generator is None else self._generator.get_state()
        return {**super().state_dict(), "generator": gather_per_rank(self.trainer, mine)}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._resumed_generator = own_state(self.trainer, state.get("generator"))
        self._generator = None  # rebuilt on the next batch, on its device, from the saved state

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if not self.on_device or not isinstance(batch, Mapping):
            return batch  # a bare tensor is model input already (the model summary's example), not a batch
        batch = dict(batch)
        x = batch.pop("input")
        if not hasattr(self, "batch_augment"):
            self.batch_augment = BatchAugment(self.augment, self.mean, self.std)
        if self._generator is None or self._generator.device != x.device:
            # Seeded per rank: repeatable runs, and every rank augments differently.
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device=x.device).manual_seed(self.seed + rank)
            if getattr(self, "_resumed_generator", None) is not None:
                self._generator.set_state(self._resumed_generator)
                self._resumed_generator = None
        training = self.trainer is not None and self.trainer.training
        out = self.batch_augment.to(x.device)(x, train=training, generator=self._generator)
        return {**batch, **as_fields(out, self.reshape)}
