"""The bare PyTorch loops that benchmarks/gpu/measure.py sets litlab's recipes against, on a GPU or a CPU.

Each trains the recipe's own network (built from its YAML, as benchmarks/overhead.py builds it) with
the recipe's optimizer, parameter groups, schedule, batch size and clipping, in the run's precision
(torch.autocast to bf16 where litlab runs bf16-mixed) and compiled where litlab compiles (the
language model's features, a classifier's backbone). What a careful hand loop would do and
litlab's loop does not: one epoch's batches are taken from the training set once and held on the
device, so no loader and no host-to-device copy is timed. Image augmentation on the device uses
litlab's own `BatchAugment`, outside autocast, as litlab's `on_after_batch_transfer` does.

The first step is counted with `FlopCounterMode` (forward, backward and optimizer, eager, as
`callbacks.Speed` counts litlab's first batch), the rest of the first epoch warms up (torch.compile
compiles there), and `epochs - 1` more epochs are timed between two CUDA synchronisations. Peak
memory is CUDA's allocator peak over the whole loop, or on a CPU the process's resident peak (as
`callbacks.Speed` reads it). MFU is FLOPs per second over `get_available_flops` (CUDA) or
`cpu_peak_flops` (a CPU), the peaks litlab's Speed uses.
"""

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from callbacks.speed import cpu_peak_flops, peak_memory_bytes
from datamodules.samples import TensorSamples, whole_batch
from datamodules.transforms import BatchAugment
from models.lazy import materialize
from models.optim import configure_optimization


@dataclass(frozen=True)
class Setup:
    device: torch.device
    bf16: bool  # autocast to bfloat16, as Lightning's bf16-mixed
    compile: bool  # torch.compile where litlab compiles


def build(spec: dict, call: bool = True, **extra):
    """A YAML `class_path` / `init_args` entry, built (or, `call=False`, bound) by hand."""
    module, _, name = spec["class_path"].rpartition(".")
    cls, kwargs = getattr(importlib.import_module(module), name), {**spec.get("init_args", {}), **extra}
    return cls(**kwargs) if call else partial(cls, **kwargs)


def peak_flops(setup: Setup) -> float | None:
    dtype = torch.bfloat16 if setup.bf16 else torch.float32
    if setup.device.type == "cuda":
        return get_available_flops(setup.device, dtype)  # None for a device Lightning's table lacks
    return cpu_peak_flops(dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def epoch_batches(dataset, batch_size: int, limit: int | None, device: torch.device) -> list[dict]:
    """One shuffled epoch of training batches (the first `limit`), on the device."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0),
                        collate_fn=whole_batch if isinstance(dataset, TensorSamples) else None)
    batches = []
    for batch in loader:
        batches.append({k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)})
        if limit is not None and len(batches) == limit:
            break
    return batches


def train(
    loss: Callable[[dict], torch.Tensor], eager_loss: Callable[[dict], torch.Tensor], params: list[nn.Parameter],
    optimization, batches: list[dict], epochs: int, setup: Setup, clip: float | None = None,
    prepare: Callable[[dict], dict] | None = None, tokens: bool = False,
) -> dict:
    """Train `epochs` epochs of `batches`; the figures of the last `epochs - 1` (see the module)."""
    if epochs < 2:
        raise ValueError("the bare loop times the epochs after the first; give it at least 2")
    device = setup.device
    opt, scheduler = ((optimization["optimizer"], optimization["lr_scheduler"]["scheduler"])
                      if isinstance(optimization, dict) else (optimization, None))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def step(loss_of: Callable[[dict], torch.Tensor], batch: dict) -> None:
        batch = prepare(batch) if prepare is not None else batch
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=setup.bf16):
            value = loss_of(batch)
        value.backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        opt.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step(eager_loss, batches[0])
    flops = counter.get_total_flops()
    for batch in batches[1:]:
        step(loss, batch)
    sync(device)
    start = time.perf_counter()
    for _ in range(epochs - 1):
        for batch in batches:
            step(loss, batch)
    sync(device)
    seconds = time.perf_counter() - start
    steps = (epochs - 1) * len(batches)
    peak = peak_flops(setup)
    return {
        "steps": steps,
        "seconds": seconds,
        "samples_per_s": (epochs - 1) * sum(len(b["target"]) for b in batches) / seconds,
        "tokens_per_s": (epochs - 1) * sum(b["input"].numel() for b in batches) / seconds if tokens else None,
        "flops_per_batch": flops,
        "mfu": flops * steps / seconds / peak if flops and peak else None,
        "peak_flops": peak,
        "peak_memory_gb": peak_memory_bytes(device) / 1e9,
    }


def classifier(cfg: dict, data, epochs: int, limit: int | None, setup: Setup) -> dict:
    """models.Classifier's work: backbone -> linear head -> cross entropy (with the recipe's label smoothing)."""
    model_args = cfg["model"]["init_args"]
    extra = set(model_args) - {"backbone", "optimizer", "schedule", "warmup_fraction", "label_smoothing", "channels_last",
                               "compile"}
    if cfg["model"]["class_path"] != "models.Classifier" or extra:
        raise ValueError(f"the bare loop mirrors models.Classifier without {sorted(extra)}")
    torch.manual_seed(0)
    data.setup("fit")
    model = nn.Sequential(backbone := build(model_args["backbone"]), nn.Linear(backbone.out_features, data.num_classes))
    materialize(model, data.example_input)  # sizes a lazy first layer, as Task.setup does
    model.to(setup.device)
    channels_last = model_args.get("channels_last", False)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if setup.compile:
        backbone.compile()  # what Classifier(compile=True) compiles: the backbone, once sized
    batches = epoch_batches(data.train_dataset, data.batch_size, limit, setup.device)
    optimization = configure_optimization(model, build(model_args["optimizer"], call=False),
                                          model_args.get("schedule", "constant"), epochs * len(batches),
                                          model_args.get("warmup_fraction"))
    smoothing = model_args.get("label_smoothing", 0.0)

    def loss(batch: dict) -> torch.Tensor:
        x = batch["input"]
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(model(x), batch["target"], label_smoothing=smoothing)

    prepare = None
    if data.on_device:
        augment = BatchAugment(data.augment, data.mean, data.std).to(setup.device)
        generator = torch.Generator(device=setup.device).manual_seed(0)
        prepare = lambda batch: {**batch, "input": augment(batch["input"], train=True, generator=generator)}  # noqa: E731
    model.train()
    return train(loss, loss, list(model.parameters()), optimization, batches, epochs, setup,
                 clip=cfg["trainer"].get("gradient_clip_val"), prepare=prepare)


def language_model(cfg: dict, data, epochs: int, limit: int | None, setup: Setup) -> dict:
    """models.LanguageModel's causal work, nanoGPT's way: features -> head tied to the embedding -> cross entropy."""
    model_args = cfg["model"]["init_args"]
    torch.manual_seed(0)
    data.setup("fit")
    backbone = build(model_args["backbone"], vocab_size=data.vocab_size).to(setup.device).train()
    head = nn.Linear(backbone.out_features, backbone.embed.num_embeddings, bias=False)
    head.weight = backbone.embed.weight  # tied, as in LanguageModel and nanoGPT
    batches = epoch_batches(data.train_dataset, data.batch_size, limit, setup.device)
    # LanguageModel's groups: no decay on biases, norms and the embeddings.
    optimization = configure_optimization(backbone, build(model_args["optimizer"], call=False),
                                          model_args.get("schedule", "cosine"), epochs * len(batches),
                                          model_args.get("warmup_fraction"), no_decay={"embed", "pos"})
    eager = backbone.forward_features
    features = torch.compile(eager) if setup.compile else eager  # what LanguageModel(compile=True) compiles

    def loss_with(forward: Callable) -> Callable[[dict], torch.Tensor]:
        def loss(batch: dict) -> torch.Tensor:
            logits = head(forward(batch["input"]))  # (B, T, V)
            return F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=-100)
        return loss

    return train(loss_with(features), loss_with(eager), list(backbone.parameters()), optimization, batches, epochs,
                 setup, clip=cfg["trainer"].get("gradient_clip_val"), tokens=True)
