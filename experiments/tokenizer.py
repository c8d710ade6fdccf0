"""`litlab tokenizer`: train a byte-level BPE tokenizer on a corpus's training split.

    litlab tokenizer --config experiments/text/llama_small.yaml --vocab_size 2048 --output tokenizers/pydoc-bpe-2k

The corpus and its split are the experiment's data section's (`source`, `split_by`, the
fractions and the seed of `TextDataModule`; a flag overrides each), so the tokenizer never sees
the validation or test text the language model is scored on. The tokenizer is GPT-2's kind
(the `tokenizers` library's byte-level BPE: every text round-trips, no byte is unknown) with
`<|endoftext|>` (ends a document), `<pad>` and `<mask>`, saved by `transformers` where
`AutoTokenizer.from_pretrained(output)` and `--data.tokenizer=OUTPUT` read it.
"""

import argparse
import importlib
import json
from pathlib import Path

import yaml

from datamodules.text import TextDataModule
from models.errors import ConfigError

SPECIAL = {"eos_token": "<|endoftext|>", "pad_token": "<pad>", "mask_token": "<mask>"}
SPLIT_KEYS = ("source", "split_by", "val_fraction", "test_fraction", "seed", "cache_dir")


def data_settings(configs: list[str]) -> dict:
    """The split settings of the experiment's data section (the last config naming one wins)."""
    settings = {}
    for config in configs:
        path = Path(config)
        if not path.is_file():
            raise ConfigError(f"--config {config} is not a file; give an experiment's YAML, e.g. experiments/text/gpt.yaml.")
        data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
        settings.update({k: v for k, v in (data.get("init_args") or {}).items() if k in SPLIT_KEYS})
    return settings


def train_bpe(texts: list[str], vocab_size: int, min_frequency: int = 2):
    """A byte-level BPE tokenizer of `vocab_size` ids learnt from `texts`, as transformers' fast tokenizer."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        transformers = importlib.import_module("transformers")
    except ImportError:
        raise ConfigError("litlab tokenizer needs the tokenizers and transformers packages; pip install 'litlab[hf]'.") from None
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL):
        raise ConfigError(f"--vocab_size {vocab_size} is below the {len(alphabet) + len(SPECIAL)} ids every byte and the "
                          "special tokens need; give a larger one (a few thousand for a small corpus).")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
                                  special_tokens=list(SPECIAL.values()), initial_alphabet=alphabet)
    tok.train_from_iterator(texts, trainer, length=len(texts))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL)


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litlab tokenizer",
        description="Train a byte-level BPE tokenizer on the training split of an experiment's corpus and save it "
                    "where AutoTokenizer (and --data.tokenizer) loads it.",
    )
    parser.add_argument("--config", action="append", default=[], help="an experiment's YAML; its data section gives the corpus and split")
    parser.add_argument("--vocab_size", type=int, required=True, help="ids in the vocabulary, the bytes and special tokens included")
    parser.add_argument("--output", required=True, help="the folder to save the tokenizer in")
    parser.add_argument("--min_frequency", type=int, default=2, help="the fewest times a pair must occur to be merged")
    parser.add_argument("--source", help="the corpus: a .txt file, a folder or a glob (default: the config's, else the embedded one)")
    parser.add_argument("--split_by", choices=("document", "position"))
    parser.add_argument("--val_fraction", type=float)
    parser.add_argument("--test_fraction", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--cache_dir")
    return parser


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    settings = data_settings(args.config)
    settings.update({k: getattr(args, k) for k in SPLIT_KEYS if getattr(args, k) is not None})
    data = TextDataModule(**settings)
    texts = data.split_texts("train")
    fast = train_bpe(texts, args.vocab_size, args.min_frequency)
    output = Path(args.output)
    fast.save_pretrained(str(output))
    size = sum(len(t.encode("utf-8")) for t in texts)
    ids = sum(len(row) for row in fast(texts, add_special_tokens=False)["input_ids"])
    summary = {"vocab_size": len(fast), "trained_on": {"split": "train", "documents": len(texts), "bytes": size,
                                                        **{k: v for k, v in settings.items() if k != "cache_dir"}},
               "bytes_per_token": round(size / ids, 3)}
    (output / "litlab.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"Trained a byte-level BPE tokenizer of {len(fast)} ids on {len(texts)} training documents ({size:,} bytes, "
          f"{size / ids:.2f} bytes a token) and saved it to {output}; use it with --data.tokenizer={output}")
