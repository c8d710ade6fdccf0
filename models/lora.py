"""LoRA: low-rank adapters trained beside a frozen pretrained backbone (`mode: lora` of FineTune and LanguageModel).

peft's public API does the adapting: `peft.LoraConfig` and `peft.inject_adapter_in_model` put an
adapter beside each targeted layer, in place (the layer computes W x + (alpha / rank) B A x, with B
starting at zero, so training starts from the base model exactly), and `BaseTunerLayer.merge`
folds an adapter into its layer's weight. The backbone stays the plain module it was.

`LoRA` is what a task in mode lora adds:

- the base stays fixed: every backbone tensor but the adapters has requires_grad False, so the
  optimizer holds the adapters and the task's head alone, and batch-norm layers stay in eval mode,
  so the base's statistics do not move either; the fit's start logs how many parameters train;
- a checkpoint holds the adapters and the head, and under `lora` the adapters' settings and the
  reference to their base: the file it was read from and that file's sha256, or (a Hub model,
  model-zoo weights, a random initialisation) the backbone and the sha256 of its weights, with
  the shape of every base tensor. Loading one builds the base as configured, refuses it in one
  sentence unless it is that base, and fills the base weights in; `checkpoint_skips` lets the
  checks that run before Lightning loads it (`check_fits`) pass the missing base;
- `merge_adapters` folds the adapters into the base weights, which leaves plain layers (no peft
  in the model or its state dict): what `litlab export` writes; a 4-bit base (QLoRA) is first
  dequantized to float32, so the model written is a float32 one;
- `load_pretrained` starts a task from any checkpoint, a LoRA one included: its base (the file
  it names, or the backbone as built), checked, with the adapters merged in.
"""

import hashlib
import importlib
import math
import os
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import is_lazy

from models.checkpoints import load_backbone, read_checkpoint, read_state_dict, resolve_checkpoint
from models.errors import ConfigError, check_fraction, check_positive
from models.lazy import has_lazy

LORA = "lora"  # checkpoint entry: the adapters' settings and the reference to the base they adapt
# litlab's Transformer: the attention's qkv and output projections and the MLP's two layers.
TRANSFORMER_TARGETS = ["qkv", "proj", "fc"]
CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_CHUNK = 1 << 24  # bytes hashed at a time


def _peft():
    from models.backbones.huggingface import import_bitsandbytes

    import_bitsandbytes()  # which peft imports, where it is installed, as it adapts a layer
    try:
        return importlib.import_module("peft")
    except ImportError:
        raise ConfigError("mode: lora needs the peft package; install it with pip install 'litlab[peft]'.") from None


def _tuner_layer() -> type:
    """peft's base class of an adapted layer (public: peft's reference documents it)."""
    _peft()
    return importlib.import_module("peft.tuners.tuners_utils").BaseTunerLayer


# ---- adapting a backbone ----


def adapter_root(backbone: nn.Module) -> nn.Module:
    """Where adapters go: a Hugging Face backbone's transformers model (peft's all-linear then leaves its
    output layer, the language-model head, alone), else the backbone itself."""
    from models.backbones.huggingface import HuggingFace

    return backbone.model if isinstance(backbone, HuggingFace) else backbone


def default_targets(backbone: nn.Module) -> str | list[str]:
    """Attention and MLP projections for Transformers (litlab's, and `all-linear` for a Hugging Face model,
    its output layer aside); every other backbone's linear layers (a timm or torchvision ViT's, an MLP's),
    or its convolutions where it has none (a ResNet, a CNN)."""
    from models.backbones.huggingface import HuggingFace
    from models.backbones.transformer import Transformer

    if isinstance(backbone, HuggingFace):
        return "all-linear"
    if isinstance(backbone, Transformer):
        return list(TRANSFORMER_TARGETS)
    targets = _layers(backbone, nn.Linear) or _layers(backbone, CONVOLUTIONS)
    if not targets:
        raise ConfigError(
            f"{type(backbone).__name__} has no linear or convolution layer for LoRA to adapt by default; name the "
            "layers to adapt in lora_targets."
        )
    return targets


def _layers(module: nn.Module, kinds) -> list[str]:
    """The names of `module`'s layers of `kinds` that an adapter can wrap: not lazy (`lazy_layers`), not
    grouped, and not read by nn.MultiheadAttention, which takes its projection's weight directly and
    would pass the adapter by."""
    skip = {f"{name}.{child}" if name else child for name, m in module.named_modules()
            if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}
    return [name for name, m in module.named_modules()
            if isinstance(m, kinds) and not isinstance(m, LazyModuleMixin) and name not in skip
            and getattr(m, "groups", 1) == 1]


def lazy_layers(module: nn.Module) -> list[str]:
    """litlab's first layers sized by the data (lazy), which no adapter wraps: peft cannot, and their
    shape, unknown until the data is seen, would make the adapted layers depend on whether weights
    were loaded first."""
    return [name for name, m in module.named_modules() if isinstance(m, LazyModuleMixin)]


def add_adapters(
    backbone: nn.Module, rank: int, alpha: float, dropout: float, targets: str | list[str] | None
) -> list[str]:
    """Put a LoRA adapter beside each of `targets` (module names, or the last parts of them; a regular
    expression matched against whole names; or all-linear), the backbone family's default where None,
    and freeze everything else of the backbone. Returns the adapted layers' names within `adapter_root`."""
    check_positive("LoRA", lora_rank=rank, lora_alpha=alpha)
    check_fraction("LoRA", lora_dropout=dropout)
    peft = _peft()
    root = adapter_root(backbone)
    chosen = default_targets(backbone) if targets is None else targets
    if chosen == "all-linear" and root is backbone:
        chosen = _layers(backbone, nn.Linear)  # peft's own would take nn.MultiheadAttention's projection too
    config = peft.LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen, bias="none",
                             exclude_modules=lazy_layers(root) or None)
    try:
        peft.inject_adapter_in_model(config, root)
    except ValueError as err:
        examples = ", ".join(_layers(root, (nn.Linear, *CONVOLUTIONS))[:4]) or "none"
        raise ConfigError(
            f"lora_targets {chosen!r} names no layer of {type(backbone).__name__} that LoRA can adapt "
            f"({str(err).splitlines()[0][:160]}); name its linear or convolution layers (such as {examples}), "
            "give a regular expression matching whole names, or all-linear."
        ) from None
    freeze_base(backbone)
    for module in backbone.modules():
        if isinstance(module, BATCH_NORMS):
            # Eval mode from the start: Lightning keeps each module's mode through a fit, and a
            # batch norm in train mode would move the base's statistics.
            module.eval()
    tuner = _tuner_layer()
    return [name for name, m in root.named_modules() if isinstance(m, tuner)]


def adapter_keys(module: nn.Module, prefix: str = "") -> set[str]:
    """The state-dict keys of `module`'s adapter weights (lora_A, lora_B...), under `prefix`."""
    tuner, keys = _tuner_layer(), set()
    for name, layer in module.named_modules():
        if isinstance(layer, tuner):
            for part in layer.adapter_layer_names:
                child = getattr(layer, part, None)
                if isinstance(child, nn.Module):
                    keys |= {f"{prefix}{name}.{part}.{key}" for key in child.state_dict()}
    return keys


def freeze_base(backbone: nn.Module) -> None:
    """Only the adapters of `backbone` learn. Set as an attribute, which a lazy parameter allows,
    so the first layer sized by the data stays frozen once it has its shape."""
    trainable = adapter_keys(backbone)
    for name, p in backbone.named_parameters():
        p.requires_grad = name in trainable


def merge(backbone: nn.Module) -> int:
    """Fold every adapter of `backbone` into its layer and put the plain layer back; returns how many."""
    tuner = _tuner_layer()
    adapted = [(name, m) for name, m in backbone.named_modules() if isinstance(m, tuner)]
    if getattr(backbone, "quantize", None):
        _merge_quantized(backbone, adapted)
    else:
        for name, layer in adapted:
            layer.merge(safe_merge=True)  # refuses to write NaNs into the base
            backbone.set_submodule(name, layer.get_base_layer())
    root = adapter_root(backbone)
    if "peft_config" in vars(root):  # peft's note of its settings on the model it adapted
        del root.peft_config
    return len(adapted)


def _merge_quantized(backbone: nn.Module, adapted: list[tuple[str, nn.Module]]) -> None:
    """QLoRA's merge, in place of peft's: a float32 model out, not a 4-bit one (folding an adapter into a
    4-bit weight rounds the sum back to 4 bits, and the adapters' small steps with it). Each adapter's delta
    weight is taken, the base is dequantized to float32 by transformers (the very NF4 values the adapters were
    trained beside, in plain nn.Linear layers, its config no longer quantized), and the delta is added."""
    deltas = {}
    for name, layer in adapted:
        deltas[name] = sum(layer.get_delta_weight(adapter).float() for adapter in layer.active_adapters)
        backbone.set_submodule(name, layer.get_base_layer())
    with torch.no_grad():
        adapter_root(backbone).dequantize(dtype=torch.float32)
        for name, delta in deltas.items():
            weight = backbone.get_submodule(name).weight
            weight += delta.to(weight.device)
    backbone.quantize = None


def count(parameter: torch.Tensor) -> int:
    """How many weights `parameter` holds: a 4-bit one (bitsandbytes) packs two a byte, and its
    quantization state keeps the shape it was quantized from."""
    state = getattr(parameter, "quant_state", None)
    return math.prod(state.shape) if state is not None else parameter.numel()


def base_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """`backbone`'s base tensors (adapters aside) under the names they have without adapters, so a
    base compares with itself before and after it is adapted."""
    tuner = _tuner_layer()
    wrapped = [f"{name}." for name, m in backbone.named_modules() if isinstance(m, tuner)]
    adapters = adapter_keys(backbone)
    state = {}
    for key, value in backbone.state_dict().items():
        if key in adapters:
            continue
        layer = next((w for w in wrapped if key.startswith(f"{w}base_layer.")), None)
        state[key if layer is None else layer + key[len(layer) + len("base_layer."):]] = value
    return state


# ---- the reference to the base ----


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """A sha256 of tensors: their names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)};".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def reference(backbone: nn.Module, file: str | None) -> dict:
    """The base that `backbone` holds: the `file` it was read from, with the file's sha256, or else the
    backbone and its weights' sha256; and the shape of every base tensor."""
    state = base_state(backbone)
    if any(is_lazy(t) for t in state.values()):
        raise RuntimeError("The base is referenced only once its lazy layers are sized (after setup).")
    shapes = {key: list(t.shape) for key, t in state.items()}
    if file is not None:
        return {"file": file, "sha256": file_sha256(file), "shapes": shapes}
    root = adapter_root(backbone)
    config = getattr(root, "config", None)
    named = getattr(config, "name_or_path", None) or getattr(root, "pretrained_cfg", {}).get("hf_hub_id")
    return {"backbone": type(backbone).__name__ + (f" {named}" if named else ""), "sha256": weights_sha256(state),
            "shapes": shapes}


def describe(base: dict) -> str:
    where = f"file {base['file']}" if base.get("file") else f"{base.get('backbone', 'backbone')} as built"
    return f"{where} (sha256 {base['sha256'][:12]}...)"


def check_same_base(saved: dict, own: dict, what: str) -> None:
    """One ConfigError unless `own` (this model's base) is `saved`'s (the one `what` was trained on)."""
    before, now = saved.get("shapes", {}), own["shapes"]
    differ = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if differ:
        key = differ[0]
        raise ConfigError(
            f"{what} adapts a base whose {key} is {before.get(key, 'absent')}, but this model's base has "
            f"{now.get(key, 'no such tensor')}{f' ({len(differ)} tensors differ)' if len(differ) > 1 else ''}; "
            f"build the backbone the adapters were trained on, the {describe(saved)}."
        )
    if saved.get("sha256") != own["sha256"]:
        raise ConfigError(
            f"{what} adapts the base {describe(saved)}, but this model's base is the {describe(own)}; "
            "start from the base the adapters were trained on (the same file, Hub model or seed)."
        )


# ---- a checkpoint of adapters as the start of another task ----


def is_adapted(content: object) -> bool:
    """Whether a checkpoint's content is a LoRA checkpoint: adapters without their base."""
    return isinstance(content, dict) and isinstance(content.get(LORA), dict)


def load_adapted(backbone: nn.Module, path: Path, content: dict, prefix: str = "backbone.") -> None:
    """Fill `backbone` with what the LoRA checkpoint at `path` holds: its base (the file it names, itself
    read the same way, or the backbone as built), checked to be that base, with the adapters merged in."""
    saved = content[LORA]
    base = saved["base"]
    if base.get("file"):
        file = Path(base["file"])
        if not file.is_file():
            raise ConfigError(f"{path} holds LoRA adapters of the base {file}, which is not there; put that file back "
                              "where it was, the base is not in the adapters' checkpoint.")
        inner = read_checkpoint(file)
        if is_adapted(inner):
            load_adapted(backbone, file, inner)
        else:
            load_backbone(backbone, file, None, read_state_dict(file, inner))
    check_same_base(base, reference(backbone, base.get("file")), f"The LoRA checkpoint {path}")
    peft = _peft()
    root = adapter_root(backbone)
    config = peft.LoraConfig(r=saved["rank"], lora_alpha=saved["alpha"], target_modules=saved["modules"], bias="none")
    peft.inject_adapter_in_model(config, root)
    expected = adapter_keys(backbone)
    state = read_state_dict(path, content)
    weights = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
    missing = sorted(expected - weights.keys())
    if missing:
        raise ConfigError(f"The LoRA checkpoint {path} lacks {len(missing)} adapter weights ({missing[0]}, ...); "
                          "it is damaged or not of this backbone.")
    backbone.load_state_dict({key: weights[key] for key in expected}, strict=False)
    merge(backbone)


# ---- what a task in mode lora adds ----


def check_trainable(backbone: nn.Module, mode: str) -> None:
    """A quantized base (HuggingFace's `quantize`) trains only through adapters: one line otherwise."""
    if getattr(backbone, "quantize", None) and mode in ("full", "gradual"):
        raise ConfigError(f"a {backbone.quantize} base cannot be trained in mode {mode}: quantized weights take no "
                          "updates; use mode: lora (QLoRA) or linear, or leave quantize unset.")


class LoRA:
    """Mixed into a task with a `backbone` (FineTune, LanguageModel): `add_lora` adapts it; the hooks
    below keep its base fixed and out of checkpoints. A task that never calls `add_lora` is unchanged."""

    lora: dict | None = None  # the adapters' settings while the backbone has adapters

    def load_pretrained(self, checkpoint: str | os.PathLike, prefix: str | None = None) -> Path:
        """Fill the backbone from `checkpoint` (a file or run folder), a LoRA checkpoint included (its base
        with its adapters merged in); returns the file read."""
        path = resolve_checkpoint(checkpoint)
        content = read_checkpoint(path)
        if is_adapted(content):
            load_adapted(self.backbone, path, content)
            rank_zero_info(f"{type(self.backbone).__name__} loaded from {path}: its base with its LoRA adapters merged in.")
        else:
            self.load_part("backbone", path, prefix, read_state_dict(path, content))
        return path

    def add_lora(
        self, rank: int, alpha: float, dropout: float, targets: str | list[str] | None, base_file: Path | None,
        frozen_parts: tuple[str, ...] = (),
    ) -> None:
        """Adapt the backbone; `base_file` is where its weights were read from (None: as built);
        `frozen_parts` are other parts that belong to the base (a language model's tied head)."""
        if getattr(self.backbone, "quantize", None):
            # QLoRA: peft's preparation of a quantized model (what is not 4-bit in float32) before its adapters
            # are added. Checkpointing stays as the backbone set it (non-reentrant, which needs no inputs
            # made to carry gradients).
            _peft().prepare_model_for_kbit_training(self.backbone.model, use_gradient_checkpointing=False)
        modules = add_adapters(self.backbone, rank, alpha, dropout, targets)
        for part in frozen_parts:
            for p in self.get_submodule(part).parameters():
                p.requires_grad = False
        self.lora = {"rank": rank, "alpha": alpha, "dropout": dropout, "modules": modules,
                     "file": None if base_file is None else str(Path(base_file).resolve())}
        adapters = adapter_keys(self.backbone, "backbone.")
        parts = tuple(f"{part}." for part in ("backbone", *frozen_parts))
        self._lora_base_keys = tuple(k for k in self.state_dict() if k.startswith(parts) and k not in adapters)
        self._lora_base: dict | None = None
        if not has_lazy(self.backbone):
            self.lora_base()

    def lora_base(self) -> dict:
        """The reference to the base the adapters adapt, worked out once: as the model is built, or as its
        lazy layers are sized, before a precision plugin converts it or a strategy moves it."""
        if self._lora_base is None:
            self._lora_base = reference(self.backbone, self.lora["file"])
        return self._lora_base

    @property
    def checkpoint_skips(self) -> tuple[str, ...]:
        """The base's keys, which a LoRA checkpoint leaves out and `on_load_checkpoint` fills in (`check_fits`
        reads these as prefixes: each is a whole key)."""
        return self._lora_base_keys if self.lora is not None else ()

    def merge_adapters(self, checkpoint: dict | None = None) -> None:
        """Fold the adapters into the base weights: plain layers again, no peft left in the model or its state
        dict, the same outputs (to float rounding). `checkpoint`, where given (what the adapters' checkpoint file
        holds), is checked first to adapt this base. Without adapters this does nothing."""
        if self.lora is None:
            return
        if checkpoint is not None:
            if not is_adapted(checkpoint):
                raise ConfigError("This model has LoRA adapters but the checkpoint holds a full model; give the "
                                  "LoRA run's checkpoint, or set mode to the one the checkpoint was trained in.")
            check_same_base(checkpoint[LORA]["base"], self.lora_base(), "This LoRA checkpoint")
        count = merge(self.backbone)
        self.lora = None
        rank_zero_info(f"{count} LoRA adapters merged into the {type(self.backbone).__name__}'s weights.")

    # ---- hooks ----

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lora is not None and mode:
            for module in self.backbone.modules():
                if isinstance(module, BATCH_NORMS):
                    module.eval()  # the base's statistics stay those it was trained with
        return self

    def size_lazy_layers(self, datamodule) -> None:
        super().size_lazy_layers(datamodule)
        if self.lora is not None:
            freeze_base(self.backbone)  # a first layer sized just now is part of the base
            self.lora_base()

    def on_fit_start(self) -> None:
        super().on_fit_start()
        if self.lora is None:
            return
        total = sum(count(p) for p in self.parameters())
        trained = sum(count(p) for p in self.parameters() if p.requires_grad)
        names = sorted({name.rsplit(".", 1)[-1] for name in self.lora["modules"]})
        if any(name.isdigit() for name in names):  # layers of an nn.Sequential: their whole names say more
            names = self.lora["modules"]
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        rank_zero_info(
            f"LoRA: {trained:,} of {total:,} parameters train ({100 * trained / total:.2f}%): rank-{self.lora['rank']} "
            f"adapters on {len(self.lora['modules'])} layers of the {type(self.backbone).__name__} ({shown})"
            f"{', and the head' if trained > self._adapter_count() else ''}; the base stays frozen."
        )

    def _adapter_count(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.lora is None:
            return
        state = checkpoint["state_dict"]
        for key in self._lora_base_keys:
            state.pop(key, None)
        settings = {key: self.lora[key] for key in ("rank", "alpha", "dropout", "modules")}
        checkpoint[LORA] = {**settings, "base": self.lora_base()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if self.lora is None:
            if is_adapted(checkpoint):
                raise ConfigError("This checkpoint holds LoRA adapters without their base; load it with mode: lora "
                                  "on the same base, or start another fine-tune from it with model.checkpoint.")
            return
        if not is_adapted(checkpoint):
            raise ConfigError("This checkpoint holds a full model, not LoRA adapters; load it with the mode it was "
                              "trained in, or start LoRA from it with model.checkpoint.")
        check_same_base(checkpoint[LORA]["base"], self.lora_base(), "This LoRA checkpoint")
        # Lightning loads the state dict strictly after this hook: the base comes from the model as built.
        # Only its parameters and buffers: a 4-bit layer's state dict also holds its quantization state,
        # which load_state_dict does not take back (the weight it belongs to stays as loaded).
        own = self.state_dict()
        tensors = {name for name, _ in self.named_parameters(remove_duplicate=False)}
        tensors |= {name for name, _ in self.named_buffers(remove_duplicate=False)}
        checkpoint["state_dict"].update({key: own[key] for key in self._lora_base_keys if key in tensors})
