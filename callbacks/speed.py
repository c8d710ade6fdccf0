"""How fast a run trains and how much of the machine it uses, every epoch.

`Speed` writes one row per training epoch to `speed.csv` in the run folder (and to W&B as
`speed/...`): samples per second, tokens per second where the input is token ids (padding left
out), FLOPs of one training batch (forward, backward and the optimizer's matrix products, counted
once with PyTorch's `FlopCounterMode` on the run's first batch, as Lightning's `measure_flops`
counts them), the model
FLOPs utilisation (FLOPs done per second over the device's peak), and the peak memory (CUDA's
allocator on a GPU, the process's resident set on a CPU). The last epoch's figures are printed
with the run's closing lines, and `litlab report` plots them.

The time of an epoch is its training alone: each batch's step and the wait for its data, summed
batch by batch, leaving out every validation and what runs right after it (a language model's
samples). The peak of a GPU comes from Lightning's table of known devices
(`get_available_flops`, by the precision's compute dtype); a CPU's is measured once, the best
rate of a 1024 x 1024 matrix product in the run's dtype on the run's threads, and cached in
`~/.cache/litlab/cpu_peak.json`. Speed lives in its own file, not in metrics.csv: a resumed
run's metrics equal the uninterrupted run's to the byte, and times never do.

Counting runs the first batch under PyTorch's dispatch mode, where some kernels take another path
and round differently (a Hugging Face model's attention on a CPU, in the last bits). The count is
saved in checkpoints, so a resumed fit does not count again: each of its batches is computed as in
the uninterrupted run, which counted its first. A compiled model is not counted
(the counter would see the compiler's work, not the model's): its FLOPs and MFU are left empty.
"""

import csv
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch.loggers import WandbLogger
from torch.utils.flop_counter import FlopCounterMode

from models.contract import batch_size

FIELDS = ("epoch", "step", "train_seconds", "samples_per_s", "tokens_per_s", "flops_per_batch", "mfu", "peak_flops",
          "peak_memory_gb")
DTYPES = {"bf16": torch.bfloat16, "16": torch.float16, "64": torch.float64}


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matrix products of a run in `precision` (Lightning's string, e.g. bf16-mixed) are done in."""
    return DTYPES.get(str(precision).split("-")[0], torch.float32)


def cpu_peak_flops(dtype: torch.dtype, cache: Path | None = None) -> float:
    """FLOP/s of this CPU's best 1024 x 1024 matrix product in `dtype` on torch's threads; measured once, cached."""
    cache = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litlab" / "cpu_peak.json"
    key = f"{platform.machine()} {cpu_name()} threads={torch.get_num_threads()} {dtype} torch={torch.__version__}"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again and write it anew
        known = {}
    if key not in known:
        n = 1024
        g = torch.Generator().manual_seed(0)  # never the global generator: the run's own draws stay as they were
        a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)
        a @ b  # warm up
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        known[key] = 2 * n**3 / best
        # Several processes (DDP ranks, sweep workers) may measure at once: each writes its own
        # file and renames it into place, so no reader ever sees half of one.
        # A cache that cannot be written (a read-only home) only costs measuring again next time.
        partial = cache.with_name(f"{cache.name}.{os.getpid()}")
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(known, indent=1))
            os.replace(partial, cache)
        except OSError:
            if partial.is_file():
                partial.unlink()
    return known[key]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kilobytes on Linux


def samples_in(batch) -> int:
    """The samples in a batch: the length of its input, else of its first tensor (a contrastive batch's views)."""
    if isinstance(batch, dict) and "input" in batch:
        return batch_size(batch)
    items = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (list, tuple)) else [batch]
    for item in items:
        if isinstance(item, torch.Tensor) and item.dim() > 0:
            return len(item)
        if isinstance(item, (dict, list, tuple)) and (found := samples_in(item)):
            return found
    return 0


def tokens_in(batch) -> int | torch.Tensor:
    """Token ids in a batch's input, padding left out; 0 where the input is not token ids. A count
    of real tokens stays a tensor on the batch's device: reading it every step would make the
    device wait for the step to end."""
    x = batch.get("input") if isinstance(batch, dict) else None
    if not isinstance(x, torch.Tensor) or x.is_floating_point():
        return 0
    padding = batch.get("padding_mask")
    return (~padding).sum() if isinstance(padding, torch.Tensor) else x.numel()


class Speed(L.Callback):
    """Samples and tokens per second, FLOPs per step, MFU and peak memory of each training epoch (see the module)."""

    def __init__(self, file: str = "speed.csv") -> None:
        self.file = file
        self.flops: int | None = None  # of one training batch of this process
        self.last: dict | None = None  # the last epoch's row
        self._counter: FlopCounterMode | None = None
        self._restart()

    def state_dict(self) -> dict:
        return {"flops": self.flops}

    def load_state_dict(self, state_dict: dict) -> None:
        self.flops = state_dict.get("flops")  # absent from a checkpoint of an older litlab: counted again

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        dtype = compute_dtype(trainer.precision)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.peak_flops = get_available_flops(device, dtype)
        else:
            self.peak_flops = cpu_peak_flops(dtype)
        self.counting = not pl_module.hparams.get("compile", False)
        self._restart()  # a fit resumed in the middle of an epoch starts counting here

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restart()

    def _restart(self) -> None:
        # Training time is summed batch by batch: each batch's step, and the wait for it since the
        # previous one, unless a validation (with whatever runs after it, such as a language
        # model's samples) came in between.
        self._train_time, self._mark, self._away = 0.0, time.perf_counter(), False
        self._samples, self._tokens, self._steps = 0, 0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        now = time.perf_counter()
        if not self._away:
            self._train_time += now - self._mark  # loading this batch
        self._away, self._batch_start = False, now
        if self.counting and self.flops is None:
            self._counter = FlopCounterMode(display=False)
            self._counter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        if self._counter is not None:
            self._counter.__exit__(None, None, None)
            self.flops, self._counter = self._counter.get_total_flops(), None
        self._samples += samples_in(batch)
        self._tokens += tokens_in(batch)
        self._steps += 1
        self._mark = time.perf_counter()
        self._train_time += self._mark - self._batch_start

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._away = True

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._counter is not None:  # never leave the counter observing after a failed step
            self._counter.__exit__(None, None, None)
            self._counter = None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if not self._steps:
            return
        seconds = max(self._train_time, 1e-9)
        tokens = int(self._tokens)  # read once an epoch
        world = trainer.world_size
        row = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_seconds": seconds,
            "samples_per_s": self._samples * world / seconds,
            "tokens_per_s": tokens * world / seconds if tokens else None,
            "flops_per_batch": self.flops,
            # Per device: this process's FLOPs per second over one device's peak.
            "mfu": self.flops * self._steps / seconds / self.peak_flops if self.flops and self.peak_flops else None,
            "peak_flops": self.peak_flops,
            "peak_memory_gb": peak_memory_bytes(pl_module.device) / 1e9,
        }
        self.last = row
        if not trainer.is_global_zero:
            return
        if log_dir:
            path = Path(log_dir) / self.file
            new = not path.is_file()
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=FIELDS)
                if new:
                    writer.writeheader()
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        logged = {f"speed/{k}": v for k, v in row.items() if k not in ("epoch", "step") and v is not None}
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_metrics(logged, step=trainer.global_step)

    def summary(self) -> str | None:
        """The closing line: the last epoch's speed, or None before any epoch ended."""
        row = self.last
        if row is None:
            return None
        parts = [f"{row['samples_per_s']:,.0f} samples/s"]
        if row["tokens_per_s"]:
            parts.append(f"{row['tokens_per_s']:,.0f} tokens/s")
        if row["flops_per_batch"]:
            parts.append(f"{row['flops_per_batch'] / 1e9:.3g} GFLOP a batch")
        if row["mfu"] is not None:
            parts.append(f"MFU {100 * row['mfu']:.2g}% of {row['peak_flops'] / 1e12:.3g} TFLOP/s")
        parts.append(f"peak memory {row['peak_memory_gb']:.2f} GB")
        return f"speed (epoch {row['epoch'] + 1}): " + ", ".join(parts)
