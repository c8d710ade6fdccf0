"""Safe loading of weights from Lightning .ckpt, plain PyTorch and .safetensors files.

Checkpoints are the interface between stages: a pretrained encoder, a fine-tuned classifier
and a teacher all reach a backbone through `load_backbone`. PyTorch files are read with
`weights_only=True`, so loading never imports, builds or runs anything named inside the file.
"""

import os
import pickle
import re
import zipfile
from pathlib import Path

import safetensors.torch
import torch
from torch import nn
from torch.nn.parameter import is_lazy

from models.errors import ConfigError

# The attribute names under which LightningModules keep their backbone (litlab's own and
# common elsewhere: DDP/DeepSpeed wrap a model as `module`), preferred in this order when
# two prefixes fit a backbone equally well, as a Distill checkpoint's student and teacher can.
PREFIXES: tuple[str, ...] = ("backbone.", "encoder.", "model.", "module.", "student.")

# Where a plain PyTorch file keeps its state dict when it also holds an epoch, an optimizer...
CONTAINER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state_dict", "module")

# torch's message when weights_only refuses a class or function the file names.
_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")

_FORMATS = "a .ckpt, .pt/.pth/.bin or .safetensors file"


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """`path` itself, or for a folder (a run directory, say) the newest last.ckpt anywhere inside it."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.rglob("last.ckpt"), key=lambda p: p.lstat().st_mtime)
        if not found:
            raise ConfigError(
                f"Checkpoint folder {path} holds no last.ckpt; point it at {_FORMATS}, or consolidate a sharded "
                f"checkpoint into one first with `python -m lightning.pytorch.utilities.consolidate_checkpoint {path}`."
            )
        path = found[-1]
    if path.is_symlink() and not path.exists():
        intact = newest_intact(path.parent)
        instead = (f"the newest intact checkpoint beside it is {intact}: give that as --ckpt_path" if intact
                   else "no intact checkpoint lies beside it, so the run must start again")
        raise ConfigError(f"Checkpoint {path} is a broken link (to {os.readlink(path)}, which is gone); {instead}.")
    if not path.exists():
        raise FileNotFoundError(f"Checkpoint {path} does not exist; check the path, or point it at {_FORMATS}.")
    return path


def newest_intact(folder: Path) -> Path | None:
    """The newest .ckpt file in `folder` (links aside) that reads as a checkpoint, if any."""
    files = sorted((p for p in folder.glob("*.ckpt") if not p.is_symlink()), key=lambda p: p.stat().st_mtime)
    for candidate in reversed(files):
        try:
            read_checkpoint(candidate)
        except ConfigError:
            continue
        return candidate
    return None


def read_checkpoint(path: str | os.PathLike) -> object:
    """What a checkpoint file holds, read safely: tensors and plain Python values only (a
    Lightning .ckpt's whole dict with its training state, a bare state dict, a .safetensors
    file's tensors). A damaged, truncated or pickled file is one ConfigError naming it."""
    path = resolve_checkpoint(path)
    try:
        if path.suffix.lower() == ".safetensors":
            return safetensors.torch.load_file(path)
        # Memory-mapped where the format allows (torch's zip files): checking keys and shapes, or
        # taking one part of a large checkpoint, then reads only what it touches.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    # A damaged file makes torch's readers raise almost anything (RuntimeError, OSError, EOFError,
    # KeyError, struct.error, UnicodeDecodeError, UnpicklingError, SafetensorError...); this call
    # only reads the one file, so whatever it raises means that file cannot be read.
    except Exception as err:
        refused = _REFUSED_GLOBAL.search(str(err)) if isinstance(err, pickle.UnpicklingError) else None
        if refused:
            # from None: torch's own message suggests weights_only=False, which litlab never does.
            raise ConfigError(
                f"Checkpoint {path} holds pickled Python objects ({refused.group(1)}), which litlab will not load "
                "because unpickling them can run arbitrary code; save the weights instead, with "
                "torch.save(model.state_dict(), ...) or safetensors.torch.save_file."
            ) from None
        named = f"{path} (linked to {os.readlink(path)})" if path.is_symlink() else path
        raise ConfigError(
            f"{named} is not a readable checkpoint ({_reason(err)}); "
            "it may be truncated or not a PyTorch/safetensors file."
        ) from err


def read_state_dict(path: str | os.PathLike, content: object = None) -> dict[str, torch.Tensor]:
    """Tensors from a Lightning .ckpt (its 'state_dict'), a plain PyTorch file (.pt/.pth/.bin: a bare state dict,
    or a dict holding one under 'state_dict', 'model', 'model_state_dict' or 'module'), or a .safetensors file.

    A state dict here is a non-empty dict of tensors keyed by name. `content`, where given, is
    what `read_checkpoint(path)` already returned.
    """
    if content is None:
        content = read_checkpoint(path)
    state = _find_state_dict(content)
    if state is None:
        found = f"keys {', '.join(map(repr, content))}" if isinstance(content, dict) else f"a {type(content).__name__}"
        raise ConfigError(
            f"Checkpoint {path} holds no state dict of tensors (it has {found}); save model.state_dict(), "
            f"bare or in a dict under one of {', '.join(map(repr, CONTAINER_KEYS))}, or load a Lightning .ckpt."
        )
    return state


def load_backbone(
    backbone: nn.Module,
    path: str | os.PathLike,
    prefix: str | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> str:
    """Load the weights for `backbone` from `path`, strictly; returns the prefix that was used ('' for none).

    The file's keys under `prefix`, with the prefix stripped, must be exactly the backbone's
    state dict keys (parameters and buffers such as batch-norm statistics) with the same
    shapes; keys outside the prefix (a head, a projector, a probe) are left alone. Lazy
    parameters take the file's shapes. Nothing is loaded unless every check passes.
    With `prefix=None` the prefix is chosen by `_choose_prefix`; '' means keys as they are.
    """
    if state is None:  # a caller filling several parts from one file reads it once and passes `state`
        state = read_state_dict(path)
    expected = backbone.state_dict()
    if prefix is None:
        prefix = _choose_prefix(state, expected)
    weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    name = type(backbone).__name__
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing keys ({_some(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_some(unexpected)})")
        groups = sorted({key.split(".")[0] + "." if "." in key else key for key in state})
        raise ConfigError(
            f"Checkpoint {path} does not match {name} under prefix {prefix!r}: {' and '.join(problems)}; is this "
            f"checkpoint of the same backbone architecture and settings? If it is, pass prefix=... to pick the keys "
            f"(the file's keys start with {_some(groups)})."
        )
    # Lazy parameters have no shape until load_state_dict gives them the file's.
    wrong = [key for key, tensor in expected.items() if not is_lazy(tensor) and weights[key].shape != tensor.shape]
    if wrong:
        key, others = wrong[0], f" (one of {len(wrong)} mismatched shapes)" if len(wrong) > 1 else ""
        raise ConfigError(
            f"Checkpoint {path} (prefix {prefix!r}) has {key} of shape {tuple(weights[key].shape)} but {name} expects "
            f"{tuple(expected[key].shape)}{others}; is this checkpoint of the same backbone architecture and "
            "settings (widths, channels, depth)?"
        )
    backbone.load_state_dict(weights, strict=True)
    return prefix


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """One ConfigError unless `state` (a whole task's checkpoint) fits `model` key for key and shape
    for shape; parts the task restores by itself (`model.checkpoint_skips`, such as a teacher) aside."""
    skip = tuple(getattr(model, "checkpoint_skips", ()))
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.startswith(skip)]
    wrong = [k for k, v in expected.items() if k in state and not is_lazy(v) and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = [f"{len(keys)} {what} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
                    for what, keys in (("missing keys", missing), ("unexpected keys", unexpected)) if keys]
        if wrong:
            key = wrong[0]
            saved, built = list(state[key].shape), list(expected[key].shape)
            problems.append(f"{key} is {saved} in the checkpoint and {built} as configured"
                            + (f" (and {len(wrong) - 1} more of another shape)" if len(wrong) > 1 else ""))
            first = next(k for k, v in expected.items() if v.dim() > 1)  # the first layer's weight
            if key == first and saved[0] == built[0] and saved[2:] == built[2:]:
                problems[-1] += (f": the input has {built[1]} channels or features where training had {saved[1]}, "
                                 "so set data.channels (or the data's input width) as it was in training")
        raise ConfigError(
            f"Checkpoint {path} does not fit {type(model).__name__} as configured: {'; '.join(problems)}; "
            "pass the config the checkpoint was trained with."
        )


def _choose_prefix(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str:
    """The prefix under which the file holds the most of the backbone's entries with the right shape.

    Candidates are '' and every dotted leading path of a file key that leaves a backbone key
    ('backbone.', 'model.backbone.', ...), so any nesting is found without a list of names.
    Ties go to the candidate with fewer keys the backbone lacks, then to '' and PREFIXES in
    order, then alphabetically. When no file key ends in a backbone key this is '', so the
    error that follows lists the file's keys as they are.
    """
    candidates = {""} | {
        key[: i + 1] for key in state for i, char in enumerate(key) if char == "." and key[i + 1 :] in expected
    }
    preference = ("", *PREFIXES)

    def score(prefix: str) -> tuple[int, int, int]:
        weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
        fits = sum(key in weights and (is_lazy(t) or weights[key].shape == t.shape) for key, t in expected.items())
        unexpected = len(weights.keys() - expected.keys())
        rank = preference.index(prefix) if prefix in preference else len(preference)
        return fits, -unexpected, -rank

    return max(sorted(candidates), key=score)


def _find_state_dict(content: object) -> dict[str, torch.Tensor] | None:
    if _is_state_dict(content):
        return dict(content)
    if isinstance(content, dict):
        for key in CONTAINER_KEYS:
            if _is_state_dict(content.get(key)):
                return dict(content[key])
    return None


def _is_state_dict(content: object) -> bool:
    return (
        isinstance(content, dict)
        and bool(content)
        and all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in content.items())
    )


def _reason(err: Exception) -> str:
    message = str(err)
    if isinstance(err, pickle.UnpicklingError) and "\n\n" in message:
        # torch wraps the unpickler's own words in paragraphs of advice; keep just those words.
        message = message.split("\n\n")[1]
    # The first sentence names the damage; torch follows it with advice that does not fit here.
    first = message.strip().splitlines()[0].split(". ")[0][:120] if message.strip() else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _some(keys: list[str], shown: int = 4) -> str:
    listed = ", ".join(keys[:shown])
    return f"{listed}, ..." if len(keys) > shown else listed
