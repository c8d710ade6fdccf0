"""Peak memory and step time as the work grows: the language-model recipe at several context lengths
and widths, and the text cache on corpora several times the embedded one.

    .venv/bin/python benchmarks/memory.py                 # or: --repeats 3 --steps 10 --copies 1 8 32

Model: `experiments/text/gpt_small.yaml`'s (a causal byte-level Transformer, 4 blocks of 4 heads,
batch 32, AdamW), at context 64, 128 and 256 with width 128, and at width 64, 128 and 256 with
context 128. Each size trains in a fresh process on one thread: 2 warm-up steps, then `--steps`
timed steps of `LanguageModel.loss` on random windows; it reports the median step and the rise of the
process's peak resident set over the one before the model was built (weights, gradients, AdamW's
state and the activations of a step). `--repeats` runs every size that many times, the sizes
interleaved; the table gives medians, with the step's min / max.

Text cache: `TextDataModule` on a folder of `--copies` copies of the embedded corpus (each copy a
document set of its own, so the cache holds them all), in a fresh process each: the rise of the peak
resident set while it builds its cache (tokenising document by document into a memory-mapped file)
and then reads one epoch of training windows from it, against the corpus's size; the rise of the
memory it owns (anonymous pages, at the end), and the file pages it maps (the cache's pages it read,
and the libraries'), which the kernel can drop and read again.
"""

import os

os.environ["OMP_NUM_THREADS"] = "1"

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

BATCH = 32
SIZES = [(64, 128), (128, 128), (256, 128), (128, 64), (128, 256)]  # (context, width)


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def status(field: str) -> int:
    """A size from /proc/self/status (RssAnon: memory the process owns; RssFile: file pages it maps)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def model_size(context: int, width: int, steps: int) -> dict:
    import torch

    from models import LanguageModel
    from models.backbones import Transformer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    tokens = torch.randint(0, 256, (BATCH, context + 1))
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    before = rss()
    model = LanguageModel(Transformer(input="tokens", vocab_size=256, causal=True, d_model=width, depth=4, heads=4,
                                      max_len=context))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 2):
        start = time.perf_counter()
        loss = model.loss(batch)[0]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step >= 2:
            times.append(time.perf_counter() - start)
    return {"parameters": sum(p.numel() for p in model.parameters()), "step_ms": 1000 * statistics.median(times),
            "peak_mb": (peak() - before) / 1e6}


def corpus_size(copies: int, work: Path) -> dict:
    from pydoc_data.topics import topics

    folder = work / f"corpus{copies}"
    folder.mkdir()
    size = 0
    for copy in range(copies):
        for name, text in topics.items():
            document = f"{text}\n(copy {copy})\n"  # each copy its own documents, not one file read many times
            (folder / f"{copy:03d}-{name}.txt").write_text(document)
            size += len(document.encode())
    from datamodules.text import TextDataModule

    before, anon = rss(), status("RssAnon")
    start = time.perf_counter()
    data = TextDataModule(source=str(folder), cache_dir=str(work / f"cache{copies}"), batch_size=BATCH)
    data.setup("fit")
    built = time.perf_counter() - start
    windows = 0
    for batch in data.train_dataloader():
        windows += len(batch["input"])
    return {"corpus_mb": size / 1e6, "windows": windows, "cache_s": built, "peak_mb": (peak() - before) / 1e6,
            "anon_mb": (status("RssAnon") - anon) / 1e6, "file_mb": status("RssFile") / 1e6}


def child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model", nargs=2, type=int, help=argparse.SUPPRESS)  # a child: context width
    parser.add_argument("--corpus", type=int, help=argparse.SUPPRESS)  # a child: copies
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model:
        print(json.dumps(model_size(*args.model, args.steps)))
        return
    if args.corpus:
        print(json.dumps(corpus_size(args.corpus, Path(args.work))))
        return

    runs = {size: [] for size in SIZES}
    for _ in range(args.repeats):
        for context, width in SIZES:
            runs[(context, width)].append(child(["--model", str(context), str(width), f"--steps={args.steps}"]))
    if not args.repeats:
        runs = {}
    print(f"gpt_small.yaml's model, batch {BATCH}, one thread, {args.repeats} repeats of {args.steps} steps\n")
    print("| context | width | parameters | training step ms (min / median / max) | peak memory rise MB |")
    print("|---|---|---|---|---|")
    for (context, width), rows in runs.items():
        steps = [r["step_ms"] for r in rows]
        print(f"| {context} | {width} | {rows[0]['parameters']:,} | {min(steps):.0f} / {statistics.median(steps):.0f} / "
              f"{max(steps):.0f} | {statistics.median(r['peak_mb'] for r in rows):.0f} |")

    print("\n| corpus | windows of 128 an epoch | cache built in | peak resident rise MB | owned (anonymous) rise MB "
          "| file pages mapped MB |\n|---|---|---|---|---|---|")
    for copies in args.copies:
        with tempfile.TemporaryDirectory() as work:
            r = child(["--corpus", str(copies), "--work", work])
        print(f"| {copies} x the embedded ({r['corpus_mb']:.1f} MB) | {r['windows']:,} | {r['cache_s']:.2f} s | "
              f"{r['peak_mb']:.0f} | {r['anon_mb']:.0f} | {r['file_mb']:.0f} |")


if __name__ == "__main__":
    main()
