"""A corpus read as a stream (`TextDataModule(streaming=True)`): never written to the disk whole.

The `datasets` library streams the source (a Hub dataset, or local .parquet / .jsonl / .json /
.csv files) shard by shard. Each process reads its own shards (`split_dataset_by_node`), and
each loader worker of a process its own shards of those (the library's own assignment), so no
document is read twice in a pass. Documents are tokenized as they arrive and packed end to end
(each closed by the end token) into windows of `block_size` tokens.

Training reads the stream again and again, each pass in a new order (the library's shuffle of
shards and of a buffer of documents, seeded by the run's seed and the pass), so a streamed fit
is one endless epoch: it is as long as `trainer.max_steps` and validated every
`trainer.val_check_interval` steps. Evaluation reads the validation or test documents once, every
token scored once. Where the data has no validation or test split of its own, each document goes
to one split by a seeded hash of its text, the same in every pass, process and worker.

Exact resume: with W loader workers, batch j of a process comes from worker j mod W, and a
worker's windows are a function of (seed, pass, position). A resumed fit therefore restarts
each worker's stream and skips the windows it had already served, reading them again without
training on them (the cost of a stream that cannot seek): the resumed run trains on exactly
the batches the uninterrupted one would. That holds on the same number of processes and
workers; a resume on another number is refused in one line, naming both.
"""

import hashlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from models.contract import Batch, Objective
from models.errors import ConfigError
from models.run_state import SeedKey, derived_seed
from models.tokenizer import BYTES, load_tokenizer

SHUFFLE_BUFFER = 1000  # documents the library shuffles among in a training stream


class HashSplit:
    """Whether a document belongs to a split carved by hash: its text's seeded hash in [low, high)."""

    def __init__(self, seed: int, low: float, high: float) -> None:
        self.seed, self.low, self.high = seed, low, high

    def __call__(self, text: str) -> bool:
        digest = hashlib.sha256(f"{self.seed}\0{text}".encode("utf-8", "surrogatepass")).digest()
        return self.low <= int.from_bytes(digest[:8], "big") / 2**64 < self.high


def open_stream(source: str, split: str):
    """The library's streaming dataset of one split of `source` (train, validation or test)."""
    from datamodules import hub

    library = hub.library()
    path = Path(source).expanduser()
    try:
        if path.is_file():
            loader, options = hub.LOADERS[path.suffix.lower()]
            found = library.load_dataset(loader, data_files=str(path), streaming=True, **options)
        elif path.is_dir():
            loader, options = hub.local_loader(path)
            found = library.load_dataset(loader, data_dir=str(path), streaming=True, **options)
        else:
            found = library.load_dataset(source, streaming=True)
    except ConnectionError:
        raise ConfigError(f"data.source {source} is neither a local file or folder nor a Hub dataset that can be reached; "
                          "give local .parquet / .jsonl / .csv files, or stream where the Hub is reachable.") from None
    return found[split]


def own_split_names(source: str) -> dict[str, str]:
    """The data's own split of each of litlab's (train, val, test) that the source has."""
    from datamodules import hub

    if (Path(source).expanduser() / "dataset_dict.json").is_file() or (Path(source).expanduser() / "state.json").is_file():
        raise ConfigError(f"{source} was written by save_to_disk and is read whole; leave streaming off for it.")
    library = hub.library()
    path = Path(source).expanduser()
    if path.exists():
        names = ["train"]  # local files make one train split unless named by file
        if path.is_dir():
            loader, options = hub.local_loader(path)
            names = list(library.load_dataset(loader, data_dir=str(path), streaming=True, **options))
    else:
        names = library.get_dataset_split_names(source)
    found = {"train": "train"} if "train" in names else {}
    val = next((name for name in hub.VALIDATION if name in names), None)
    if val:
        found["val"] = val
    if "test" in names:
        found["test"] = "test"
    if "train" not in found:
        raise ConfigError(f"{source} has the splits {', '.join(names)} but none named train; stream a dataset with one.")
    return found


class StreamedWindows(IterableDataset):
    """Windows of `block_size` tokens of one split of a streamed corpus (see the module).

    `split`: the data's split to read; `keep`: which of its documents belong here (a `HashSplit`,
    or None for all). `train`: an endless stream of passes, each reshuffled; else one pass, the last
    window padded. `skip_batches`: batches this process already trained on (a resume), set by the loader.
    """

    def __init__(self, source: str, split: str, text_column: str, tokenizer: str, block_size: int,
                 objective: Objective, train: bool, seed: int, rank: int, world_size: int,
                 keep: Callable[[str], bool] | None = None, mask_fraction: float = 0.15, batch_size: int = 1) -> None:
        self.source, self.split, self.text_column, self.tokenizer_name = source, split, text_column, tokenizer
        self.block_size, self.objective, self.train, self.seed = block_size, objective, train, seed
        self.rank, self.world_size, self.keep, self.mask_fraction = rank, world_size, keep, mask_fraction
        self.batch_size = batch_size
        self.skip_batches = 0

    def documents(self, passes: int | None = None) -> Iterator[str]:
        """The texts of this process's and worker's shards of the split, pass after pass."""
        from datasets.distributed import split_dataset_by_node

        for number in itertools.count() if passes is None else range(passes):
            data = split_dataset_by_node(open_stream(self.source, self.split), rank=self.rank, world_size=self.world_size)
            if self.train:
                data = data.shuffle(seed=self.seed, buffer_size=SHUFFLE_BUFFER)
                data.set_epoch(number)
            read = 0
            for row in data:
                text = row.get(self.text_column)
                if not isinstance(text, str):
                    raise ConfigError(f"data.text_column {self.text_column!r} of {self.source} holds {type(text).__name__}, "
                                      "not texts; name a column of texts.")
                read += 1
                if self.keep is None or self.keep(text):
                    yield text
            if not read:
                raise ConfigError(f"The {self.split} split of {self.source} gave this process and loader worker no "
                                  "document; use fewer processes or data.num_workers, or more shards (files).")

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        # Batch j of this process came from worker j mod `workers`: this worker served the
        # batches worker, worker + workers, ... of those already trained on.
        skip = len(range(worker, self.skip_batches, workers)) * self.batch_size
        tok = load_tokenizer(self.tokenizer_name)
        random_high = 255 if tok.name == BYTES else tok.vocab_size  # bytes: 0..254, never the separator
        n = self.block_size + (1 if self.objective == "causal" else 0)
        buffer: list[int] = []
        index = 0
        for text in self.documents(None if self.train else 1):
            buffer += tok.encode(text).tolist()
            buffer.append(tok.end_id)
            while len(buffer) >= n:
                window, buffer = buffer[:n], buffer[self.block_size :]  # a causal window's last id starts the next
                if index >= skip:
                    yield self._sample(window, (worker, index), tok, random_high)
                index += 1
        if not self.train and len(buffer) > n - self.block_size:  # the last, shorter evaluation window
            yield self._sample(buffer, (worker, index), tok, random_high)

    def _sample(self, window: list[int], place: tuple[int, int], tok, random_high: int) -> Batch:
        """A window as a sample; a masked model's corruption is drawn by (seed, rank, worker, position)."""
        from datamodules.text import window_sample

        key = SeedKey.EVAL_MASKING if not self.train else 0
        g = torch.Generator().manual_seed(derived_seed(self.seed, key, self.rank, *place))
        return window_sample(torch.tensor(window, dtype=torch.long), self.block_size, self.objective, tok.pad_id,
                             tok.mask_id, random_high, self.mask_fraction, g)


class StreamLoader(DataLoader):
    """The training loader of a stream: its state is the batches this process trained on, and the
    process and worker counts that make them reproducible."""

    def __init__(self, dataset: StreamedWindows, batches_done: Callable[[], int | None], **kwargs) -> None:
        super().__init__(dataset, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"stream_batches": self.batches_done() or 0, "processes": self.dataset.world_size,
                "workers": self.num_workers}

    def load_state_dict(self, state: dict[str, int]) -> None:
        saved = (state.get("processes"), state.get("workers"))
        if saved != (self.dataset.world_size, self.num_workers):
            raise ConfigError(
                f"This streamed run was saved with {saved[0]} process(es) and {saved[1]} loader worker(s) and resumes with "
                f"{self.dataset.world_size} and {self.num_workers}: a stream resumes exactly only as it was read; "
                f"resume with --trainer.devices / --data.num_workers as saved."
            )
        self.dataset.skip_batches = state["stream_batches"]
