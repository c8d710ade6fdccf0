"""Text for language models: corpora encoded once into a memory-mapped cache of token ids, and
windows of tokens for causal or masked modelling.

Text is tokenized by `tokenizer` (`models/tokenizer.py`): `bytes`, litlab's byte-level
tokenizer that needs no download (the default), or a Hugging Face tokenizer by Hub id or folder
(for example one `litlab tokenizer` trained on this corpus). The embedded corpus is Python's own
documentation, `pydoc_data.topics` (about 466 KB, in every CPython), one document per topic; a
user's corpus is a `.txt` file, a folder of them or a glob, one document per file, read as
strict UTF-8.

The encoded corpus is written once to `<cache_dir>/<key>.u8` (`.u16`, `.u32`: the smallest
unsigned integer type that holds the tokenizer's ids), each document followed by the end token
(with bytes, 0xFF, a byte that never occurs in UTF-8, stands for it), and read back through a
memory map, so a corpus larger than memory works and a second run starts at once. The key
covers the sources' paths, sizes and modification times, the tokenizer's vocabulary and the
split, so the cache is rebuilt when any of them changes. Documents are split between train, val
and test (seeded, at the document ends nearest the fractions of the text's bytes, so every
tokenizer gets the same documents in each split) or, with `split_by: position`, the stream is
cut at fixed points; each split is one contiguous range, so no window straddles two.

Bits per byte stay comparable across tokenizers: each split records the bytes of text it covers
(a document's UTF-8 bytes and one for its end, so that with bytes a token is a byte), and
`tokens_per_byte` turns a loss in nats per token into bits per byte.
"""

import glob
import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datamodules.base import BatchScope, DataModule, Splits
from datamodules.files import files_under
from models.contract import IGNORE_INDEX, Batch
from models.run_state import SeedKey, batches_done, derived_seed, run_seed
from models.contract import Objective
from models.errors import ConfigError, check_fraction, check_positive
from models.tokenizer import BYTES, END, SEPARATOR, Tokenizer, load_tokenizer

SplitBy = Literal["document", "position"]


def read_utf8(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); convert it, "
            f"e.g. iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8.txt, or leave it out."
        ) from None


def text_files(source: str) -> list[Path]:
    """The .txt files a source names: one file, a folder (searched recursively, links followed
    only to files inside it: `datamodules/files.py`) or a glob; each real file once."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [Path(f) for f in files_under(path) if f.endswith(".txt")]
    else:
        found = sorted(Path(p) for p in glob.glob(source, recursive=True))
        real = {}
        for f in found:
            if f.is_file():
                real.setdefault(os.path.realpath(f), f)  # a file reached twice (through a link) is read once
        files = sorted(real.values())
    if not files:
        raise ConfigError(f"No .txt files at {source}; give a text file, a folder of .txt files or a glob.")
    return files


DATASET_FILES = (".parquet", ".jsonl", ".json", ".csv", ".tsv")


def is_dataset(source: str) -> bool:
    """Whether `source` is read by the datasets library: a save_to_disk folder, a data file of a kind
    it reads (not .txt: a text file is one document) or a folder of them, or a Hub id (no such local
    path, no glob)."""
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return True
        suffixes = {Path(f).suffix.lower() for f in files_under(path)}
        return bool(suffixes & set(DATASET_FILES)) and ".txt" not in suffixes  # a folder of data files
    if path.is_file():
        return path.suffix.lower() in DATASET_FILES
    from datamodules.hub import HUB_ID

    return bool(HUB_ID.match(source)) and path.suffix.lower() != ".txt"


class TokenWindows(Dataset):
    """Windows of one split of the cached corpus, each {"input", "target", "padding_mask"} of `block_size` tokens.

    Training windows start at a random place, seeded by (seed, epoch, index) like every
    random draw of a training epoch (the loader sets `epoch`); evaluation windows walk the
    split without overlap, the last one padded, so every token is scored exactly once.
    `causal`: the target is the next token. `masked`: BERT's corruption of 15% of the
    positions (80% become the mask token, 10% a random token, 10% stay), scored only there.
    The tokenizer's ids (`tokenizer`) say which tokens pad, end and mask; only plain numbers are
    kept, so a window set pickles cheaply into loader workers.
    """

    def __init__(self, path: Path, start: int, end: int, block_size: int, objective: Objective, train: bool,
                 seed: int, mask_fraction: float = 0.15, tokenizer: Tokenizer | None = None) -> None:
        tokenizer = tokenizer or load_tokenizer(BYTES)
        self.path, self.start, self.end, self.block_size = path, start, end, block_size
        self.objective, self.train, self.seed, self.mask_fraction = objective, train, seed, mask_fraction
        self.dtype, self.pad, self.end_id, self.mask = tokenizer.dtype, tokenizer.pad_id, tokenizer.end_id, tokenizer.mask_id
        self.bytes = tokenizer.name == BYTES  # END is stored as SEPARATOR
        self.random_high = SEPARATOR if self.bytes else tokenizer.vocab_size
        if objective == "masked" and self.mask is None:
            raise ConfigError(f"tokenizer {tokenizer.name} has no mask token, which masked language modelling "
                              "writes over the chosen tokens; use a tokenizer with one (BERT's) or objective: causal.")
        self.epoch = 0
        self.shift = 1 if objective == "causal" else 0  # a causal window needs one more token, its last target
        self.tokens: np.memmap | None = None  # opened lazily: in each worker process, never pickled
        span = end - start - self.shift
        if span < block_size:
            raise ConfigError(
                f"A split of {end - start} tokens is shorter than block_size {block_size}; lower block_size "
                "or give more text."
            )
        self.count = span // block_size if train else -(-span // block_size)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "tokens": None}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> Batch:
        if self.tokens is None:
            self.tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        n = self.block_size + self.shift
        if self.train:
            g = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch, i))
            first = self.start + int(torch.randint(self.end - self.start - n + 1, (), generator=g))
        else:
            g = torch.Generator().manual_seed(derived_seed(self.seed, SeedKey.EVAL_MASKING, i))
            first = self.start + i * self.block_size
        window = torch.from_numpy(np.array(self.tokens[first : min(first + n, self.end)], dtype=np.int64))
        if self.bytes:
            window[window == SEPARATOR] = END
        return window_sample(window, self.block_size, self.objective, self.pad, self.mask, self.random_high,
                             self.mask_fraction, g)


def window_sample(window: torch.Tensor, block_size: int, objective: Objective, pad: int, mask: int | None,
                  random_high: int, mask_fraction: float, g: torch.Generator) -> Batch:
    """{"input", "target", "padding_mask"} of a window of ids (block_size + 1 of them for `causal`, whose
    targets are the next ids; fewer at a split's end, padded with `pad`). `masked`: BERT's corruption
    of `mask_fraction` of the positions, drawn from `g`, scored only there."""
    shift = 1 if objective == "causal" else 0
    n = block_size + shift
    real = len(window) - shift  # positions with a target
    window = torch.cat([window, torch.full((n - len(window),), pad)])  # the last evaluation window
    x = window[:block_size].clone()
    padding = torch.arange(block_size) >= real
    if objective == "causal":
        y = window[1:].clone()
        y[padding] = IGNORE_INDEX
        return {"input": x, "target": y, "padding_mask": padding}
    chosen = (torch.rand(block_size, generator=g) < mask_fraction) & ~padding
    y = torch.where(chosen, x, IGNORE_INDEX)
    roll = torch.rand(block_size, generator=g)
    x = torch.where(chosen & (roll < 0.8), mask, x)
    random_token = torch.randint(0, random_high, (block_size,), generator=g)
    x = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_token, x)
    return {"input": x, "target": y, "padding_mask": padding}

class TextDataModule(DataModule):
    """Text for `models.LanguageModel`, `causal` (GPT) or `masked` (BERT).

    source: None for the embedded corpus (Python's pydoc topics); a .txt file, a folder or a glob (one
        document per file); or a corpus the `datasets` library reads (a save_to_disk folder, a .parquet,
        .jsonl, .json or .csv file, or a Hub dataset id: one document per row of `text_column`, with the
        data's own validation and test splits where it has them).
    tokenizer: `bytes` (litlab's byte-level tokens), or a Hugging Face tokenizer's Hub id or folder;
        the model's vocabulary is linked from it.
    block_size: tokens per window (the model's context).
    prompts_file: UTF-8 text, one prompt per line, that `litlab predict` continues.
    streaming: read a `datasets` corpus as a stream, never written to the disk whole
        (`datamodules/streaming.py`): one endless training epoch, so the fit needs
        `trainer.max_steps` and `trainer.val_check_interval` (steps).
    """

    num_classes = None

    def __init__(
        self,
        source: str | None = None,
        tokenizer: str = BYTES,
        text_column: str = "text",
        objective: Objective = "causal",
        block_size: int = 128,
        split_by: SplitBy = "document",
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        mask_fraction: float = 0.15,
        cache_dir: str | None = None,
        prompts_file: str | None = None,
        streaming: bool = False,
        batch_size: int = 32,
        batch_scope: BatchScope = "device",
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(
            val_fraction=val_fraction, test_fraction=test_fraction, batch_size=batch_size, batch_scope=batch_scope,
            num_workers=num_workers, seed=seed,
        )
        check_positive("TextDataModule", block_size=block_size)
        check_fraction("TextDataModule", mask_fraction=mask_fraction)
        if objective not in ("causal", "masked"):
            raise ConfigError(f"objective must be 'causal' or 'masked'; got {objective!r}.")
        if split_by not in ("document", "position"):
            raise ConfigError(f"split_by must be 'document' or 'position'; got {split_by!r}.")
        self.save_hyperparameters()
        self.source, self.objective, self.block_size, self.split_by = source, objective, block_size, split_by
        self.tokenizer = load_tokenizer(tokenizer)
        self.text_column = text_column
        if objective == "masked" and self.tokenizer.mask_id is None:
            raise ConfigError(f"tokenizer {tokenizer} has no mask token, which masked language modelling writes over "
                              "the chosen tokens; use a tokenizer with one (BERT's) or objective: causal.")
        self.mask_fraction = mask_fraction
        self.prompts_file = prompts_file
        self.streaming = streaming
        if streaming and (source is None or not is_dataset(source)):
            raise ConfigError("streaming: true reads a corpus through the datasets library: give data.source as local "
                              ".parquet / .jsonl / .csv files or a Hub dataset id (a .txt corpus is cached, not streamed).")
        default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "litlab" / "text"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default
        self.tokens_per_byte: dict[str, float] = {}  # of each split, known once it is loaded

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def example_input(self) -> torch.Tensor:
        return torch.zeros(2, self.block_size, dtype=torch.long)

    # ---- the corpus and its cache ----

    def documents(self) -> tuple[list[tuple[str, Callable[[], str]]], str, dict[str, list]]:
        """[(name, read)] of the corpus's documents, a fingerprint of their versions, and the documents
        of the validation and test splits the data has of its own (a `datasets` corpus's)."""
        if self.source is None:
            from pydoc_data.topics import topics

            return [(name, (lambda name=name: topics[name])) for name in sorted(topics)], sys.version, {}
        if is_dataset(self.source):
            return self._dataset_documents()
        files = text_files(self.source)
        stamp = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return [(str(f), (lambda f=f: read_utf8(f))) for f in files], json.dumps(stamp), {}

    def _dataset_documents(self) -> tuple[list[tuple[str, Callable[[], str]]], str, dict[str, list]]:
        """One document per row of `text_column`, read by the datasets library (`datamodules/hub.py`)."""
        from datamodules import hub

        splits = hub.own_splits(hub.read(self.source, None, None), self.source)
        stamp, documents = [], {}
        for split, data in splits.items():
            hub.check_column(data, self.text_column, "text_column", "texts", self.source, split)
            files = [Path(f["filename"]) for f in data.cache_files]
            stamp += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]
            stamp.append((split, len(data)))
            documents[split] = [(f"{split}[{i}]", (lambda data=data, i=i: data[i][self.text_column] or ""))
                                for i in range(len(data))]
        return documents.pop("train"), json.dumps(stamp), documents

    def _write(self, out, texts: list[str]) -> list[tuple[int, int]]:
        """Append the ids of `texts`, each closed by the end token, to `out`; (ids, bytes) of each."""
        tok = self.tokenizer
        if tok.name == BYTES:
            sizes = []
            for text in texts:
                data = text.encode("utf-8", "surrogatepass") + bytes([SEPARATOR])
                out.write(data)
                sizes.append((len(data), len(data)))
            return sizes
        sizes = []
        for text, ids in zip(texts, tok.encode_batch(texts)):
            np.asarray([*ids, tok.end_id], dtype=tok.dtype).tofile(out)
            sizes.append((len(ids) + 1, len(text.encode("utf-8", "surrogatepass")) + 1))
        return sizes

    def cached_corpus(self) -> tuple[Path, dict[str, tuple[int, int]]]:
        """The cache file, encoded if missing or stale, and each split's (start, end) in it, in tokens.
        Sets `tokens_per_byte` of each split."""
        docs, stamp, own = self.documents()
        split = (self.split_by, self.val_fraction, self.test_fraction, self.seed)
        key = hashlib.sha256(json.dumps([self.source, self.text_column, stamp, split, self.tokenizer.fingerprint]).encode()
                             ).hexdigest()[:16]
        suffix = f".u{np.dtype(self.tokenizer.dtype).itemsize * 8}"
        path, index = self.cache_dir / f"{key}{suffix}", self.cache_dir / f"{key}.json"
        if path.is_file() and index.is_file():
            stored = json.loads(index.read_text())
            bounds = {k: tuple(v) for k, v in stored["bounds"].items()}
            self.tokens_per_byte = {k: (bounds[k][1] - bounds[k][0]) / stored["bytes"][k] for k in bounds}
            return path, bounds
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        carved = [name for name in ("val", "test") if name not in own]  # the splits cut from the training documents
        if self.split_by == "document":
            if len(docs) < 1 + len(carved):
                raise ConfigError(
                    f"split_by: document needs at least {1 + len(carved)} documents (files) and {self.source} has "
                    f"{len(docs)}; use split_by: position."
                )
            order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(self.seed)).tolist()
            docs = [docs[i] for i in order]
        tmp = path.with_suffix(".tmp")
        ends, byte_ends = [0], [0]
        with tmp.open("wb") as out:  # a few documents at a time: the corpus never has to fit in memory
            ordered = [*docs, *own.get("val", []), *own.get("test", [])]
            for first in range(0, len(ordered), 256):
                for count, size in self._write(out, [read() for _, read in ordered[first : first + 256]]):
                    ends.append(ends[-1] + count)
                    byte_ends.append(byte_ends[-1] + size)
        # The training documents come first, then the data's own val and test documents, if any.
        pool, pool_bytes = ends[len(docs)], byte_ends[len(docs)]
        shares = {("val", "test"): (self.val_fraction, self.test_fraction), ("val",): (self.val_fraction,),
                  ("test",): (self.test_fraction,), (): ()}[tuple(carved)]
        fractions = [1.0 - sum(shares[i:]) for i in range(len(shares))]
        if self.split_by == "document":
            # At the document ends nearest the fractions of the bytes, a document at least each: the
            # same documents in each split whatever the tokenizer.
            cut_docs = []
            for n, f in enumerate(fractions):
                low = (cut_docs[-1] if cut_docs else 0) + 1
                high = len(docs) - (len(fractions) - n)
                nearest = min(range(1, len(docs) + 1), key=lambda i: abs(byte_ends[i] - f * pool_bytes))
                cut_docs.append(min(max(nearest, low), high))
            cuts, cut_bytes = [ends[i] for i in cut_docs], [byte_ends[i] for i in cut_docs]
        else:  # the bytes of a part of the stream are its share of the tokens (exact with bytes)
            cuts = [int(f * pool) for f in fractions]
            cut_bytes = [round(c * pool_bytes / pool) for c in cuts]
        edges = [0, *cuts, pool]
        starts = dict(zip(["train", *carved], zip(edges[:-1], edges[1:])))
        byte_edges = [0, *cut_bytes, pool_bytes]
        sizes = dict(zip(["train", *carved], [b - a for a, b in zip(byte_edges[:-1], byte_edges[1:])]))
        first = len(docs)
        for name in ("val", "test"):  # the data's own
            if name in own:
                last = first + len(own[name])
                starts[name], sizes[name] = (ends[first], ends[last]), byte_ends[last] - byte_ends[first]
                first = last
        bounds = {name: starts[name] for name in ("train", "val", "test")}
        if any(end <= start for start, end in bounds.values()):
            raise ConfigError(f"The corpus is too small to split {bounds}; give more text or change the fractions.")
        os.replace(tmp, path)  # whole or absent, even if interrupted
        index.write_text(json.dumps({"bounds": bounds, "bytes": sizes}))
        self.tokens_per_byte = {k: (bounds[k][1] - bounds[k][0]) / sizes[k] for k in bounds}
        return path, bounds

    def split_texts(self, split: str) -> list[str]:
        """The documents of one split as text (with `split_by: position`, the pieces of the stream it
        holds), from a byte-level cache of the same split: what `litlab tokenizer` learns from."""
        byte_level = TextDataModule(self.source, tokenizer=BYTES, text_column=self.text_column, split_by=self.split_by, val_fraction=self.val_fraction,
                                    test_fraction=self.test_fraction, cache_dir=str(self.cache_dir), seed=self.seed)
        path, bounds = byte_level.cached_corpus()
        start, end = bounds[split]
        with path.open("rb") as f:
            f.seek(start)
            data = f.read(end - start)
        return [doc.decode("utf-8", "replace") for doc in data.split(bytes([SEPARATOR])) if doc]

    # ---- a streamed corpus (datamodules/streaming.py) ----

    def setup(self, stage: str | None = None) -> None:
        if self.streaming and stage == "fit" and self.trainer is not None and self.trainer.max_steps < 0:
            raise ConfigError("A streamed corpus is one endless epoch: set --trainer.max_steps, and validate every N steps "
                              "with --trainer.val_check_interval=N --trainer.check_val_every_n_epoch=null.")
        super().setup(stage)

    def _split(self) -> None:
        if not self.streaming:
            return super()._split()
        from datamodules.streaming import HashSplit, StreamedWindows, open_stream, own_split_names

        own = own_split_names(self.source)
        carved = [name for name in ("val", "test") if name not in own]
        shares = {"val": self.val_fraction, "test": self.test_fraction}
        edges, low = {}, 0.0  # the carved splits take the first shares of the hash range, training the rest
        for name in carved:
            edges[name], low = (low, low + shares[name]), low + shares[name]
        edges["train"] = (low, 1.0)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        world = self.world_size
        shards = open_stream(self.source, own["train"]).n_shards
        per_process = shards // world if shards % world == 0 else shards
        if self.num_workers > per_process:
            raise ConfigError(f"{self.source} streams in {shards} shard(s), {per_process} for each of {world} process(es), "
                              f"and each of data.num_workers={self.num_workers} workers reads shards of its own; lower "
                              "data.num_workers, or split the data into more files.")

        def windows(name: str, train: bool, rank: int = rank, world: int = world) -> "StreamedWindows":
            keep = HashSplit(self.seed, *edges[name]) if carved and (name in carved or name == "train") else None
            return StreamedWindows(self.source, own.get(name, own["train"]), self.text_column, self.tokenizer.name,
                                   self.block_size, self.objective, train, seed=run_seed() if train else self.seed,
                                   rank=rank, world_size=world, keep=keep, mask_fraction=self.mask_fraction,
                                   batch_size=self.device_batch_size)

        self.train_dataset = self.labelled_dataset = windows("train", True)
        self.val_dataset, self.test_dataset = windows("val", False), windows("test", False)
        self.unlabelled_dataset = None
        # Bits per byte need each evaluation split's tokens per byte: counted over all of it, once.
        for name in ("val", "test"):
            tokens = size = 0
            for text in windows(name, False, rank=0, world=1).documents(1):
                tokens += len(self.tokenizer.encode(text)) + 1
                size += len(text.encode("utf-8", "surrogatepass")) + 1
            self.tokens_per_byte[name] = tokens / max(size, 1)

    def train_dataloader(self) -> DataLoader:
        if not self.streaming:
            return super().train_dataloader()
        from datamodules.streaming import StreamLoader

        loader = self._loader(self.train_dataset, None, StreamLoader, batches_done=lambda: batches_done(self.trainer))
        if getattr(self, "_resume_position", None) is not None:
            loader.load_state_dict(self._resume_position)
            self._resume_position = None
        self._train_loader = loader
        return loader

    def _exact(self, dataset) -> DataLoader:
        # A stream's windows are already this process's own (it reads its own shards).
        return self._loader(dataset) if self.streaming else super()._exact(dataset)

    def load(self) -> Splits:
        path, bounds = self.cached_corpus()
        common = dict(block_size=self.block_size, objective=self.objective, seed=run_seed(),
                      mask_fraction=self.mask_fraction, tokenizer=self.tokenizer)
        train, val, test = (TokenWindows(path, *bounds[name], train=name == "train", **common)
                            for name in ("train", "val", "test"))
        self.tokens_per_split = {name: end - start for name, (start, end) in bounds.items()}
        return Splits(train=train, val=val, test=test)

    def read_inputs(self, path: str) -> None:
        """Continue the prompts in `path`, one a line: `--inputs` stands for `--data.prompts_file`."""
        if not Path(path).is_file():
            raise ConfigError(f"--inputs {path} is not a file; give a UTF-8 text file of prompts, one a line.")
        self.prompts_file = path

    def predict_dataloader(self) -> DataLoader:
        if self.prompts_file is None:
            raise ConfigError("litlab predict on text continues prompts: give --inputs prompts.txt (or "
                              "--data.prompts_file), one prompt per line.")
        lines = read_utf8(Path(self.prompts_file)).splitlines()
        prompts = [{"prompt": line, "input": self.tokenizer.encode(line)} for line in lines if line.strip()]
        if not prompts:
            raise ConfigError(f"{self.prompts_file} holds no prompt; write one per line.")
        # One prompt a batch: prompts differ in length, and generation goes token by token anyway.
        return DataLoader(prompts, batch_size=None)
