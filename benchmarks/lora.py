"""LoRA against full fine-tuning of one model: trained parameters, optimizer state, peak memory,
step time and checkpoint size, side by side.

    .venv/bin/python benchmarks/lora.py                 # gpt_lora.yaml's GPT; or: --rounds 5 --steps 30

The model is `experiments/text/gpt_lora.yaml`'s (a causal Transformer, width 128, 4 blocks,
128-token context) classifying four classes, its base a saved random start (the figures do not
depend on what the weights are). Each round runs both modes, each in a fresh process (so the
peak resident set is the mode's own), the mode that goes first alternating by round, on one
thread. A process builds `FineTune` from the base file, trains `--steps` AdamW steps on batches
of 16 (`--batch`) random token windows after 3 warm-up steps, and reports the median step, the
bytes of the optimizer's state, the rise of its peak resident set over the one before the model
was built (peft imported on both sides first), and the size of the Lightning checkpoint a
one-step fit saves (adapters, head and base reference for LoRA; every weight and its optimizer
state for full). Prints a Markdown table: medians over rounds, and the LoRA / full ratios with
min / median / max.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"
os.environ["WANDB_MODE"] = "disabled"

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKBONE = {"input": "tokens", "causal": True, "pool": "mean", "d_model": 128, "depth": 4, "heads": 4, "max_len": 128,
            "vocab_size": 256}  # the byte tokenizer's
CLASSES = 4


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(mode: str, base: str, steps: int, rank: int, alpha: float, batch: int, work: Path) -> dict:
    """One mode in this process: see the module."""
    import lightning as L
    import peft  # noqa: F401  (imported before the baseline on both sides: its modules are not training memory)
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    from models import FineTune
    from models.backbones import Transformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (batch, BACKBONE["max_len"]))
    target = torch.randint(0, CLASSES, (batch,))
    before = rss_bytes()
    lora = {"lora_rank": rank, "lora_alpha": alpha} if mode == "lora" else {}
    model = FineTune(backbone=Transformer(**BACKBONE), num_classes=CLASSES, checkpoint=base, mode=mode, **lora)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)  # what the task's optimizer holds: the trainable tensors alone
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        loss = F.cross_entropy(model(tokens), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - start)
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before

    data = [{"input": tokens[i], "target": target[i]} for i in range(batch)]
    fit = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, limit_val_batches=0, accelerator="cpu", default_root_dir=work)
    fit.fit(model, DataLoader(data, batch_size=batch))
    ckpt = work / f"{mode}.ckpt"
    fit.save_checkpoint(ckpt)
    return {"mode": mode, "trained": sum(p.numel() for p in trained), "total": sum(p.numel() for p in model.parameters()),
            "step_ms": 1000 * statistics.median(times), "optimizer_mb": state / 1e6, "peak_mb": peak / 1e6,
            "checkpoint_mb": ckpt.stat().st_size / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rank", type=int, default=4, help="gpt_lora.yaml's lora_rank")
    parser.add_argument("--alpha", type=float, default=8.0, help="gpt_lora.yaml's lora_alpha")
    parser.add_argument("--batch", type=int, default=16, help="gpt_lora.yaml's batch_size")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "BASE"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as work:
            print(json.dumps(measure(args.one[0], args.one[1], args.steps, args.rank, args.alpha, args.batch, Path(work))))
        return

    import torch

    from models.backbones import Transformer

    with tempfile.TemporaryDirectory() as work:
        base = str(Path(work) / "base.pt")
        torch.manual_seed(0)
        torch.save(Transformer(**BACKBONE).state_dict(), base)
        results = {"full": [], "lora": []}
        for round_ in range(args.rounds):
            for mode in ("full", "lora") if round_ % 2 == 0 else ("lora", "full"):
                child = subprocess.run(
                    [sys.executable, __file__, "--one", mode, base, f"--steps={args.steps}", f"--rank={args.rank}",
                     f"--alpha={args.alpha}", f"--batch={args.batch}"], capture_output=True, text=True, check=True)
                results[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
    full, lora = results["full"][0], results["lora"][0]
    print(f"{args.rounds} rounds of {args.steps} steps, batch {args.batch} x {BACKBONE['max_len']} tokens, one thread, "
          f"LoRA rank {args.rank}, alpha {args.alpha:g}\n")
    print("| | full fine-tune | LoRA | LoRA / full (min / median / max) |\n|---|---|---|---|")
    print(f"| parameters trained | {full['trained']:,} | {lora['trained']:,} of {lora['total']:,} "
          f"({100 * lora['trained'] / lora['total']:.1f} %) | {lora['trained'] / full['trained']:.3f} |")
    for key, label, unit in (("optimizer_mb", "optimizer state", "MB"), ("peak_mb", "peak memory rise", "MB"),
                             ("step_ms", "training step", "ms"), ("checkpoint_mb", "checkpoint", "MB")):
        ratios = [b[key] / a[key] for a, b in zip(results["full"], results["lora"])]
        f_med = statistics.median(r[key] for r in results["full"])
        l_med = statistics.median(r[key] for r in results["lora"])
        print(f"| {label} | {f_med:.3g} {unit} | {l_med:.3g} {unit} | "
              f"{min(ratios):.3f} / {statistics.median(ratios):.3f} / {max(ratios):.3f} |")


if __name__ == "__main__":
    main()
