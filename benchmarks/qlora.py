"""QLoRA against LoRA and full fine-tuning of one Hugging Face decoder on the CPU: the bytes the
model holds, optimizer state, peak memory and step time, side by side.

    .venv/bin/python benchmarks/qlora.py                # or: --rounds 5 --steps 20 --width 768

The model is a Qwen2 decoder (`--width`, 4 blocks, the byte tokenizer's 259 tokens) saved here
with random weights, loaded as `experiments/text/qwen_qlora.yaml` loads its Hub model: through
`models.backbones.HuggingFace` into `models.LanguageModel`, the three ways the recipe and its
variants train it:

- full: every weight trains (`mode: full`);
- LoRA: rank-16 adapters on every projection beside the float32 base (`mode: lora`);
- QLoRA: the same adapters beside the base loaded in 4-bit NF4 (`quantize: 4bit`), computing in
  float32, as the recipe runs without a GPU.

Each round runs the three, each in a fresh process (so the peak resident set is its own), in an
order that rotates by round, on one thread. A process builds the model, trains `--steps` AdamW steps
of next-token prediction on batches of 8 random 128-token windows after 3 warm-up steps, and
reports the median step, the bytes of the model's parameters and buffers, of the optimizer's state,
and the rise of its peak resident set over the one before the model was built (transformers, peft
and bitsandbytes imported first on every side) while it trains: the peak is reset once the model is
built (Linux's clear_refs), as loading maps safetensors' weights in only as they are first read. Prints a Markdown table: medians over rounds, and
each mode's ratio to full fine-tuning with min / median / max.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("full", "lora", "qlora")
LABELS = {"full": "full fine-tune", "lora": "LoRA", "qlora": "QLoRA (4-bit base)"}
VOCAB = 259  # the byte tokenizer's
CONTEXT, BATCH, RANK = 128, 8, 16


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    """The process's peak resident set since it started, or since `reset_peak`."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # Linux: the peak starts again from the current set
        f.write("5")


def measure(mode: str, folder: str, steps: int) -> dict:
    """One mode in this process: see the module."""
    import torch

    from models import LanguageModel, lora
    from models.backbones import HuggingFace
    from models.backbones.huggingface import import_bitsandbytes

    import_bitsandbytes()  # and peft and transformers' model classes, on every side before the baseline
    lora._peft()
    import transformers.models.qwen2  # noqa: F401

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (BATCH, CONTEXT + 1))
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    before = rss_bytes()
    backbone = HuggingFace(name=folder, lm_head="causal", quantize="4bit" if mode == "qlora" else None)
    adapters = {"mode": "lora", "lora_rank": RANK, "lora_alpha": 2.0 * RANK} if mode != "full" else {}
    model = LanguageModel(backbone=backbone, **adapters)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-3)  # what the task's optimizer holds: the trainable tensors alone
    reset_peak()  # loading is left out: safetensors' weights are mapped in as they are first read
    times = []
    for step in range(steps + 3):
        start = time.perf_counter()
        model.loss(batch)[0].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 3:
            times.append(time.perf_counter() - start)
    held = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values()
                if isinstance(t, torch.Tensor))
    return {"mode": mode, "trained": sum(p.numel() for p in trained),
            "weights": sum(lora.count(p) for p in model.parameters()), "step_ms": 1000 * statistics.median(times),
            "model_mb": held / 1e6, "optimizer_mb": state / 1e6, "peak_mb": (peak_bytes() - before) / 1e6}


def save_decoder(folder: Path, width: int) -> None:
    import torch

    from models.backbones import HuggingFace

    torch.manual_seed(0)
    sizes = {"hidden_size": width, "num_hidden_layers": 4, "num_attention_heads": width // 64,
             "num_key_value_heads": width // 128, "intermediate_size": 11 * width // 4,
             "max_position_embeddings": CONTEXT, "vocab_size": VOCAB}
    HuggingFace(architecture="qwen2", config_overrides=sizes, lm_head="causal").model.save_pretrained(folder)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=int, default=512, help="the decoder's hidden size (a multiple of 128)")
    parser.add_argument("--one", nargs=2, metavar=("MODE", "FOLDER"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.steps)))
        return

    with tempfile.TemporaryDirectory() as work:
        folder = Path(work) / "qwen2"
        save_decoder(folder, args.width)
        results = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            for mode in MODES[round_ % 3:] + MODES[:round_ % 3]:
                child = subprocess.run([sys.executable, __file__, "--one", mode, str(folder), f"--steps={args.steps}"],
                                       capture_output=True, text=True, check=True)
                results[mode].append(json.loads(child.stdout.strip().splitlines()[-1]))
    first = {mode: runs[0] for mode, runs in results.items()}
    print(f"Qwen2 decoder, width {args.width}, 4 blocks, {first['full']['weights']:,} weights; {args.rounds} rounds of "
          f"{args.steps} steps, batch {BATCH} x {CONTEXT} tokens, one thread, adapters of rank {RANK}\n")
    print("| | " + " | ".join(LABELS[m] for m in MODES) + " | LoRA / full | QLoRA / full |")
    print("|---|" + "---|" * (len(MODES) + 2))
    print("| parameters trained | " + " | ".join(f"{first[m]['trained']:,}" for m in MODES) + " | "
          + " | ".join(f"{first[m]['trained'] / first['full']['trained']:.3f}" for m in ("lora", "qlora")) + " |")
    for key, label, unit in (("model_mb", "model held", "MB"), ("optimizer_mb", "optimizer state", "MB"),
                             ("peak_mb", "peak memory rise, training", "MB"), ("step_ms", "training step", "ms")):
        medians = [f"{statistics.median(r[key] for r in results[m]):.3g} {unit}" for m in MODES]
        ratios = []
        for mode in ("lora", "qlora"):
            each = [b[key] / a[key] for a, b in zip(results["full"], results[mode])]
            ratios.append(f"{min(each):.3f} / {statistics.median(each):.3f} / {max(each):.3f}")
        print(f"| {label} | " + " | ".join(medians) + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
