"""Bits per byte that general-purpose compressors reach on the embedded corpus's held-out text:
the yardstick for a language model's `test/bpb` (a compressor is a model of text too).

    .venv/bin/python benchmarks/text_compressors.py

Each compressor gets the held-out split of `TextDataModule` as in experiments/text/gpt_small.yaml
(seeded document split, 10% val, 10% test), at its strongest setting: alone, and after the
training text (the bytes it adds to the compressed training text), which is what a language
model trained on that text has to beat.
"""

import bz2
import lzma
import zlib

import numpy as np

from datamodules.text import SEPARATOR, TextDataModule


def main() -> None:
    dm = TextDataModule(val_fraction=0.1, test_fraction=0.1)
    path, bounds = dm.cached_corpus()
    tokens = np.memmap(path, dtype=np.uint8, mode="r")
    compressors = {
        "zlib -9": lambda b: len(zlib.compress(b, 9)),
        "bz2 -9": lambda b: len(bz2.compress(b, 9)),
        "xz -9e": lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)),
    }

    def text(split: str) -> bytes:
        start, end = bounds[split]
        return bytes(tokens[start:end]).replace(bytes([SEPARATOR]), b"\n")

    train = text("train")
    print("| held-out split | compressor | alone | after the training text |")
    print("|---|---|---|---|")
    for split in ("val", "test"):
        held = text(split)
        for name, size in compressors.items():
            alone = 8 * size(held) / len(held)
            given = 8 * (size(train + held) - size(train)) / len(held)
            print(f"| {split} ({len(held):,} bytes) | {name} | {alone:.2f} | {given:.2f} |")


if __name__ == "__main__":
    main()
