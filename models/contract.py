"""The data contract: everything a task may ask of its DataModule, written down once.

A DataModule serves batches as dicts with named fields (`Batch`) and declares what a task
needs to build itself:

- `num_classes`: the number of classes where there are labels (None where there are none);
- `vocab_size`: the vocabulary size where the inputs are token ids (None otherwise);
- `example_input`: a small batch of model input, on the CPU, from which lazy layers are sized;
- `objective`, where it serves token windows to a language model: `causal` (the next token, the
  default for data that does not say) or `masked` (corrupted tokens back);
- `tokenizer`, where its inputs are token ids: a `models.tokenizer.Tokenizer`, whose name is
  linked into a language model (bytes where the data has none), and `tokens_per_byte` of each
  split where a language model's bits per byte need it (1 where the data does not say);
- which samples are labelled: a `target` of `IGNORE_INDEX` marks an unlabelled sample.

`datamodules.DataModule` implements it; any LightningDataModule that has these attributes
works with every task. `check` turns a missing piece into one clear sentence.
"""

from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

import torch

from models.errors import ConfigError

# The target of a sample without a label: PyTorch's own default `ignore_index`, so a cross
# entropy skips such samples without being told, and a language model's unscored positions too.
IGNORE_INDEX = -100

# What a language model learns, and so what its data serves: the next token, or masked tokens back.
Objective = Literal["causal", "masked"]


class Batch(TypedDict, total=False):
    """The fields a batch may carry; a DataModule fills those its data has.

    input: what a backbone reads: images (B, C, H, W), feature sequences (B, T, F) or token ids (B, T).
    views: several augmented versions of `input` (contrastive learning), each shaped like `input`.
    target: class labels (B,), or per-position targets (B, T); IGNORE_INDEX where there is none.
    padding_mask: (B, T) booleans, True at padding positions of token input.
    text: token ids (B, L) of a caption paired with each `input` image (image-text learning).
    text_padding_mask: (B, L) booleans, True at padding positions of `text`.
    caption_id: (B,) the same number for identical captions, so retrieval counts an identical caption as a match.
    """

    input: torch.Tensor
    views: list[torch.Tensor]
    target: torch.Tensor
    padding_mask: torch.Tensor
    text: torch.Tensor
    text_padding_mask: torch.Tensor
    caption_id: torch.Tensor


@runtime_checkable
class DataContract(Protocol):
    num_classes: int | None
    vocab_size: int | None

    @property
    def example_input(self) -> torch.Tensor: ...


CONTRACT = ("num_classes", "vocab_size", "example_input")


def check(datamodule: object) -> None:
    """Raise one ConfigError naming every piece of the contract `datamodule` lacks."""
    missing = [name for name in CONTRACT if not hasattr(datamodule, name)]
    if missing:
        raise ConfigError(
            f"The data {type(datamodule).__name__} does not follow litlab's data contract: it has no "
            f"{', '.join(missing)}; derive it from datamodules.DataModule or add them (see models/contract.py)."
        )


def field(batch: Batch, name: str, task: str) -> Any:
    """`batch[name]`, or one sentence saying which fields the data gave instead."""
    if name not in batch:
        raise ConfigError(
            f"{task} reads the batch field '{name}', but the data gives {', '.join(map(repr, batch))}; "
            + ("set data.augment.views: 2 for two views of each image." if name == "views"
               else "check that the data suits this task.")
        )
    return batch[name]


def labels_of(datamodule: object) -> int | None:
    """The CLI's link from the data to a task's `num_classes`."""
    check(datamodule)
    return datamodule.num_classes


def class_names(model: object, datamodule: object, count: int) -> list[str]:
    """The names of a model's `count` classes, in label order: those saved with the model (its
    training data's, `Task.classes`), else its data's, else the labels' numbers."""
    for names in (getattr(model, "classes", None), getattr(datamodule, "classes", None)):
        if names is not None and len(names) == count:
            return [str(name) for name in names]
    return [str(c) for c in range(count)]


def vocab_of(datamodule: object) -> int | None:
    """The CLI's link from the data to a token backbone's `vocab_size`."""
    check(datamodule)
    return datamodule.vocab_size


def tokenizer_of(datamodule: object) -> str:
    """The CLI's link from the data to a language model's `tokenizer`: the name of the data's (`bytes` where it has none)."""
    tokenizer = getattr(datamodule, "tokenizer", None)
    return getattr(tokenizer, "name", "bytes")


def objective_of(datamodule: object) -> Objective:
    """The CLI's link from the data to a language model's `objective`: what its windows are made for."""
    objective = getattr(datamodule, "objective", "causal")
    if objective not in ("causal", "masked"):
        raise ConfigError(f"{type(datamodule).__name__}.objective must be 'causal' or 'masked'; got {objective!r}.")
    return objective


def request_reference_set(datamodule: object, task: str) -> None:
    """Ask the data for its labelled training samples, without training-time augmentation, as
    validation dataloader 0 (the validation set becomes dataloader 1)."""
    if not hasattr(datamodule, "request_reference_set"):
        raise ConfigError(
            f"{task} needs a reference set of labelled training samples, which {type(datamodule).__name__} "
            "cannot serve (it has no request_reference_set); derive it from datamodules.DataModule, "
            "or turn the monitor off."
        )
    datamodule.request_reference_set()


def batch_size(batch: Batch) -> int:
    """The number of samples in a batch, for callbacks that count them (Lightning's ThroughputMonitor's `batch_size_fn`)."""
    return len(batch["input"])
