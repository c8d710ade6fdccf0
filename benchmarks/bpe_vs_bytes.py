"""Byte-level BPE against bytes: the same small Llama decoder on the embedded corpus, at about the
same parameter count and the same training time, scored in bits per byte of the same held-out text.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bpe_vs_bytes.py --rounds 3 --seconds 60

Each round runs every model once, interleaved, each in its own `litlab fit` process with one
thread (`--trainer.max_time`, validation every epoch, then the test of the best checkpoint).
The BPE tokenizer is trained first by `litlab tokenizer` on the training split alone. Models:

- bpe: d64 x 2, a 1,024-id BPE vocabulary, 64-token windows (about 190 bytes of context);
- bytes: d80 x 2, the 259 byte ids, 64-byte windows (the parameter count of bpe's, from width);
- bytes-long: the same d80 x 2 on 192-byte windows (bpe's context in bytes, three times the compute a step).

Prints a Markdown table: parameters, test bits per byte and the wall time of each, min / median /
max over the rounds, and zlib's and xz's bits per byte on the same held-out text.
"""

import argparse
import json
import lzma
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LITLAB = str(Path(sys.executable).with_name("litlab"))
RECIPE = ROOT / "experiments" / "text" / "llama_small.yaml"


def overrides(d: int, block: int) -> str:
    return json.dumps({"hidden_size": d, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                       "intermediate_size": d * 8 // 3, "max_position_embeddings": block, "tie_word_embeddings": True})


def fit(name: str, tokenizer: str, d: int, block: int, seconds: int, folder: Path) -> dict:
    args = [LITLAB, "fit", "--config", str(RECIPE), f"--data.tokenizer={tokenizer}", f"--data.block_size={block}",
            f"--model.backbone.init_args.config_overrides={overrides(d, block)}", "--model.optimizer.init_args.lr=0.01",
            "--trainer.max_epochs=1000", f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
            "--model.sample_prompts=null",
            "--trainer.enable_progress_bar=false", f"--trainer.logger.init_args.name=bench-{name}",
            f"--data.cache_dir={folder / 'cache'}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    out = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    values = dict(line.split(" = ") for line in out.splitlines() if line.startswith("test/"))
    params = next(line.split(":")[1].strip() for line in out.splitlines() if line.startswith("Total params"))
    return {"bpb": float(values["test/bpb"]), "wall": wall, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=60, help="training time of each fit (--trainer.max_time)")
    parser.add_argument("--vocab_size", type=int, default=1024)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="litlab-tokenizers-"))
    bpe = folder / "bpe"
    subprocess.run([LITLAB, "tokenizer", "--vocab_size", str(args.vocab_size), "--output", str(bpe),
                    "--cache_dir", str(folder / "cache")], check=True, capture_output=True)
    models = {"bpe": (str(bpe), 64, 64), "bytes": ("bytes", 80, 64), "bytes-long": ("bytes", 80, 192)}
    results = {name: [] for name in models}
    for round in range(args.rounds):
        for name, (tokenizer, d, block) in models.items():
            results[name].append(fit(name, tokenizer, d, block, args.seconds, folder))
            print(f"round {round + 1} {name}: {results[name][-1]}", file=sys.stderr, flush=True)

    sys.path.insert(0, str(ROOT))
    from datamodules.text import SEPARATOR, TextDataModule

    path, bounds = TextDataModule(cache_dir=str(folder / "cache")).cached_corpus()
    held_out = path.read_bytes()[bounds["test"][0] : bounds["test"][1]]
    zlib_bpb = 8 * len(zlib.compress(held_out, 9)) / len(held_out)
    xz_bpb = 8 * len(lzma.compress(held_out.replace(bytes([SEPARATOR]), b"\n"), preset=9 | lzma.PRESET_EXTREME)) / len(held_out)

    def spread(values: list[float], fmt: str) -> str:
        return " / ".join(format(v, fmt) for v in (min(values), statistics.median(values), max(values)))

    print(f"| model | tokenizer | context | parameters | test bits per byte (min / median / max) | wall s, {args.seconds} s of training |")
    print("|---|---|---|---|---|---|")
    for name, (tokenizer, d, block) in models.items():
        rows = results[name]
        kind = f"BPE, {args.vocab_size} ids" if tokenizer != "bytes" else "bytes"
        print(f"| {name} (d{d} x 2) | {kind} | {block} tokens | {rows[0]['params']} | {spread([r['bpb'] for r in rows], '.3f')} | "
              f"{spread([r['wall'] for r in rows], '.1f')} |")
    print(f"\nzlib -9: {zlib_bpb:.3f}, xz -9e: {xz_bpb:.3f} bits per byte on the same held-out text ({len(held_out):,} bytes).")


if __name__ == "__main__":
    main()
