"""Training throughput of `models.LanguageModel` through Lightning against a bare PyTorch loop, in one process.

    .venv/bin/python benchmarks/language_model.py               # or: --steps 60 --warmup 5 --repeats 5

Each repeat trains experiments/text/gpt_small.yaml's recipe (causal byte-level Transformer, d_model 128,
depth 4, 4 heads, block 128, batch 32; AdamW lr 3e-3 betas (0.9, 0.95), decay 0.1 off biases, norms and
embeddings; cosine schedule, 5% warmup; clipping 1.0) twice, order alternating: by `lightning.Trainer.fit`
and by a nanoGPT-style loop (forward_features -> tied head -> cross entropy, backward, clip, step, schedule,
zero_grad), from the same weights on the same batches, held in memory so that loading is out of both. Model
building, Trainer start-up and the first `--warmup` steps are not timed. Prints tokens/s per repeat and a
Markdown table of the litlab / bare throughput ratio (below 1: litlab is slower).
"""

import os

# One thread on both sides, as benchmarks/overhead.py: thread scheduling noise would swamp the difference.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import copy
import gc
import itertools
import logging
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

# Benchmark the checkout this file is in, even where an editable install points elsewhere.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, SequentialLR
from torch.utils.data import DataLoader

import models
from datamodules.text import TextDataModule
from models.backbones import Transformer

LR, BETAS, WEIGHT_DECAY, WARMUP_FRACTION, CLIP = 3e-3, (0.9, 0.95), 0.1, 0.05, 1.0


def groups(opt: torch.optim.Optimizer) -> list[tuple]:
    """(weight decay, parameter count, last learning rate) per group: equal iff both sides optimize alike."""
    return sorted((g["weight_decay"], sum(map(torch.numel, g["params"])), round(g["lr"], 12)) for g in opt.param_groups)


class StepTimer(L.Callback):
    """From the end of the last warm-up step to the end of the last, as the bare loop: each per-step
    cost of Lightning's loop (fetch, transfer, hooks, logging, schedule) counts once a step."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        elif batch_idx == self.total - 1:
            self.seconds, self.loss = time.perf_counter() - self.start, outputs["loss"].item()


def litlab(template: nn.Module, batches: DataLoader, warmup: int) -> tuple[float, float, list]:
    model = models.LanguageModel(
        copy.deepcopy(template), objective="causal", schedule="cosine", warmup_fraction=WARMUP_FRACTION,
        optimizer=partial(torch.optim.AdamW, lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY),
    )
    timer = StepTimer(warmup, len(batches))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, gradient_clip_val=CLIP, log_every_n_steps=25,  # as the recipe
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, callbacks=[timer],
    )
    gc.collect()  # neither side pays for the other's garbage
    trainer.fit(model, train_dataloaders=batches)  # no validation loader: training alone
    return timer.seconds, timer.loss, groups(trainer.optimizers[0])


def bare(template: nn.Module, batches: DataLoader, warmup: int) -> tuple[float, float, list]:
    backbone = copy.deepcopy(template).train()
    head = nn.Linear(backbone.out_features, backbone.embed.num_embeddings, bias=False)
    head.weight = backbone.embed.weight  # tied, as in LanguageModel and nanoGPT
    # LanguageModel's groups (no decay on biases, norms, embeddings; nanoGPT decays embeddings) in its order, and
    # the norm clipped in the optimizer's order, as Lightning does: summed alike, the weights stay bit-identical.
    decay = {False: [], True: []}
    for name, p in backbone.named_parameters():
        decay[p.ndim >= 2 and not name.startswith(("embed.", "pos."))].append(p)
    opt = torch.optim.AdamW([{"params": decay[False], "weight_decay": 0.0}, {"params": decay[True]}],
                            lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    params = [p for g in opt.param_groups for p in g["params"]]
    # models/optim.py's cosine schedule, stepped every step: both sides train at the same learning rates.
    ramp = int(WARMUP_FRACTION * len(batches))
    scheduler = CosineAnnealingLR(opt, T_max=max(len(batches) - ramp, 1))
    if ramp:
        scheduler = SequentialLR(opt, [LinearLR(opt, 1.0 / ramp, total_iters=ramp), scheduler], milestones=[ramp])
    gc.collect()
    for i, batch in enumerate(batches):
        logits = head(backbone.forward_features(batch["input"]))
        loss = F.cross_entropy(logits.flatten(0, 1), batch["target"].flatten(), ignore_index=-100)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        scheduler.step()
        # nanoGPT's place; Lightning's, just before backward, measured about 1% faster here (allocator reuse).
        opt.zero_grad(set_to_none=True)
        if i == warmup - 1:
            start = time.perf_counter()
    return time.perf_counter() - start, loss.item(), groups(opt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per side and repeat")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if min(args.warmup, args.steps) < 1:
        parser.error("--warmup and --steps must be at least 1")
    torch.set_num_threads(1)
    for name in ("lightning.pytorch", "lightning.fabric"):  # per-run banners, not results
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*(log_every_n_steps|num_workers|val_dataloader).*")  # expected here
    with tempfile.TemporaryDirectory(prefix="litlab-lm-bench-") as cache:  # a cache of its own: no race on a shared one
        data = TextDataModule(objective="causal", block_size=128, batch_size=32, val_fraction=0.1, test_fraction=0.1,
                              cache_dir=cache)
        data.setup("fit")
        loader = DataLoader(data.train_dataset, batch_size=data.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        held = list(itertools.islice(loader, args.warmup + args.steps))
    if len(held) < args.warmup + args.steps:
        sys.exit(f"the corpus has {len(loader)} training batches; lower --steps or --warmup")
    tokens = sum(b["input"].numel() for b in held[args.warmup:])
    batches = DataLoader(held, batch_size=None)  # a loader, not the list: Lightning reads a list as several loaders
    torch.manual_seed(0)
    template = Transformer(input="tokens", vocab_size=data.vocab_size, causal=True, d_model=128, depth=4, heads=4,
                           max_len=128)
    rows = []  # (litlab tokens/s, bare tokens/s) per repeat
    for repeat in range(args.repeats):
        # Alternate the order, so neither side always runs on a warmer cache or a quieter machine.
        order = [litlab, bare] if repeat % 2 == 0 else [bare, litlab]
        timed = {side.__name__: side(template, batches, args.warmup) for side in order}
        (lit_s, lit_loss, lit_groups), (bare_s, bare_loss, bare_groups) = timed["litlab"], timed["bare"]
        # The same work, to the bit: a difference in the updates, even of rounding, grows over the steps.
        assert (lit_loss, lit_groups) == (bare_loss, bare_groups), f"the sides differ: {timed}"
        rows.append((tokens / lit_s, tokens / bare_s))
        print(f"repeat {repeat}: litlab {tokens / lit_s:,.0f} tokens/s, bare {tokens / bare_s:,.0f} tokens/s, "
              f"ratio {bare_s / lit_s:.3f}, last loss {lit_loss:.4f} / {bare_loss:.4f}", file=sys.stderr, flush=True)
    ratios = [lit / b for lit, b in rows]
    print(f"\ntorch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} thread(s), "
          f"{args.repeats} repeats of {args.steps} timed steps after {args.warmup} warm-up, "
          f"{tokens // args.steps} tokens a step, code from {Path(models.__file__).parents[1]}\n")
    print("| model | litlab tokens/s | bare tokens/s | ratio litlab / bare min / median / max |")
    print("|---|---|---|---|")
    medians = [statistics.median(r[i] for r in rows) for i in (0, 1)]
    print(f"| text/gpt_small | {medians[0]:,.0f} | {medians[1]:,.0f} | "
          f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f} |")


if __name__ == "__main__":
    main()
