"""Tokenizers, the one module every text consumer uses: language-model corpora, captions, text
classification and generation.

`tokenizer: bytes` (the default) is litlab's byte-level tokenizer: the vocabulary is the 256 byte
values plus END (end of a document), PAD and MASK. Any text in any language is its UTF-8 bytes,
so decoding gives back exactly what was encoded, and nothing needs a download.

Any other name is a Hugging Face tokenizer: a Hub id (google-bert/bert-base-uncased) or a folder
that `AutoTokenizer` loads (a `save_pretrained` folder, or one written by `litlab tokenizer`,
which trains a byte-level BPE tokenizer on a corpus's training split). Only fast tokenizers (the
`tokenizers` library's, which need no code from the folder) are used, and `trust_remote_code` is
never set. `load_tokenizer(name)` gives either kind behind one interface: `encode`, `decode`,
`tokenize` (a padded batch), `vocab_size`, and the ids of padding, document end and mask.
"""

import functools
import hashlib
import importlib
from collections.abc import Sequence
from pathlib import Path

import torch

from models.errors import ConfigError

END, PAD, MASK = 256, 257, 258
VOCAB_SIZE = 259
SEPARATOR = 0xFF  # END on disk: never a byte of UTF-8 text
BYTES = "bytes"


def encode(text: str) -> torch.Tensor:
    """Token ids (T,) of `text`: its UTF-8 bytes (lone surrogates pass through, so any str round-trips)."""
    return torch.tensor(list(text.encode("utf-8", "surrogatepass")), dtype=torch.long)


def decode(ids: torch.Tensor | list[int]) -> str:
    """Text of token ids; END, PAD and MASK are dropped, and bytes that do not form UTF-8 become U+FFFD."""
    values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
    return bytes(i for i in values if i < SEPARATOR).decode("utf-8", "replace")


def tokenize(texts: Sequence[str | bytes], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N, max_len) of `texts` (str, or bytes already encoded), cut and padded with PAD, and
    their padding mask (N, max_len), True at padding."""
    tokens = torch.full((len(texts), max_len), PAD)
    lengths = torch.zeros(len(texts), dtype=torch.long)
    for row, text in enumerate(texts):
        ids = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
        ids = torch.tensor(list(ids[:max_len]), dtype=torch.long)
        tokens[row, : len(ids)], lengths[row] = ids, len(ids)
    return tokens, torch.arange(max_len) >= lengths[:, None]


class Tokenizer:
    """What litlab asks of a tokenizer. `name` is what a config names it by; `fingerprint` changes
    whenever the ids of a text would (a corpus cache is keyed by it)."""

    name: str
    fingerprint: str
    vocab_size: int
    pad_id: int
    end_id: int  # closes each document of a corpus
    mask_id: int | None  # what masked language modelling writes over a chosen token (None: it cannot)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (T,) of `text`, as it appears inside a document (no special tokens added)."""
        raise NotImplementedError

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of token ids, special tokens left out."""
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str | bytes], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch (N, max_len) of `texts` (str, or UTF-8 bytes), each a whole input to a model (a
        tokenizer of a pretrained model adds its own special tokens), cut and padded, and its padding
        mask (N, max_len), True at padding."""
        raise NotImplementedError

    @property
    def dtype(self) -> type:
        """The smallest unsigned integer type of numpy that holds every id, for caches on disk."""
        import numpy as np

        top = max(self.vocab_size - 1, self.end_id)
        return next(t for t in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(t).max)

    def random_ids(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Ids of ordinary tokens drawn uniformly (BERT's random replacement)."""
        return torch.randint(0, self.vocab_size, shape, generator=generator)


class ByteTokenizer(Tokenizer):
    """The UTF-8 bytes of a text (see the module's docstring)."""

    name = fingerprint = BYTES
    vocab_size, pad_id, end_id, mask_id = VOCAB_SIZE, PAD, END, MASK

    def encode(self, text: str) -> torch.Tensor:
        return encode(text)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        return decode(ids)

    def tokenize(self, texts: Sequence[str | bytes], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tokenize(texts, max_len)

    @property
    def dtype(self) -> type:
        import numpy as np

        return np.uint8  # END is stored as SEPARATOR, a byte UTF-8 never holds

    def random_ids(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, SEPARATOR, shape, generator=generator)


class HuggingFaceTokenizer(Tokenizer):
    """A fast tokenizer of `transformers`, by Hub id or folder. Documents end with the tokenizer's
    end-of-sequence token (its separator where it has none, as BERT's); padding uses its padding
    token, else the end token (GPT-2 and Llama have no padding token; the padding mask says where
    padding is, so the id does not matter)."""

    def __init__(self, name: str, revision: str | None = None) -> None:
        try:
            transformers = importlib.import_module("transformers")
        except ImportError:
            raise ConfigError(f"tokenizer {name!r} is a Hugging Face tokenizer, which needs the transformers package; "
                              "pip install 'litlab[hf]', or use tokenizer: bytes.") from None
        try:
            tok = transformers.AutoTokenizer.from_pretrained(name, revision=revision, use_fast=True,
                                                             trust_remote_code=False)
        except ValueError as err:
            if "trust_remote_code" in str(err):
                raise ConfigError(f"tokenizer {name} needs code that is not part of transformers, and litlab never runs "
                                  "code a model folder brings; choose a tokenizer transformers implements.") from None
            if not Path(name).expanduser().is_dir():
                raise ConfigError(f"tokenizer {name} could not be loaded: {str(err).splitlines()[0]}") from None
            raise ConfigError(self._missing(name)) from None
        except OSError:
            raise ConfigError(self._missing(name)) from None
        if not tok.is_fast:
            raise ConfigError(f"tokenizer {name} has no fast (tokenizers library) version; litlab needs one.")
        end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if end is None:
            raise ConfigError(f"tokenizer {name} has neither an end-of-sequence nor a separator token, so the "
                              "documents of a corpus cannot be told apart; add one (tokenizer.add_special_tokens).")
        self.name, self.hf = name, tok
        self.fingerprint = hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()[:16]
        self.vocab_size = len(tok)  # added tokens included
        self.end_id = end
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else end
        self.mask_id = tok.mask_token_id

    @staticmethod
    def _missing(name: str) -> str:
        local = Path(name).expanduser()
        where = (f"{local} holds no tokenizer files (tokenizer.json, or a vocabulary that transformers reads)"
                 if local.exists() else f"{name} is neither a folder nor a Hub id that could be fetched (offline, or no "
                 "such tokenizer)")
        return (f"{where}; give a save_pretrained folder (tokenizer.save_pretrained(folder) where the Hub is "
                "reachable), a folder from litlab tokenizer, or tokenizer: bytes.")

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor(self.hf(text, add_special_tokens=False)["input_ids"], dtype=torch.long)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """The ids of many texts at once (the library encodes them in parallel)."""
        return self.hf(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        return self.hf.decode(values, skip_special_tokens=True)

    def tokenize(self, texts: Sequence[str | bytes], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        strings = [t.decode("utf-8", "ignore") if isinstance(t, bytes) else t for t in texts]
        ids = self.hf(strings, add_special_tokens=True, truncation=True, max_length=max_len)["input_ids"]
        tokens = torch.full((len(ids), max_len), self.pad_id)
        lengths = torch.tensor([len(row) for row in ids], dtype=torch.long)
        for row, values in enumerate(ids):
            tokens[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        return tokens, torch.arange(max_len) >= lengths[:, None]

    def save(self, folder: str | Path) -> None:
        """Write the tokenizer's files where `AutoTokenizer.from_pretrained(folder)` reads them."""
        self.hf.save_pretrained(str(folder))


@functools.lru_cache(maxsize=8)
def load_tokenizer(name: str | None = BYTES) -> Tokenizer:
    """The tokenizer a config names: `bytes` (or None) for litlab's bytes, else a Hugging Face tokenizer's
    Hub id or folder. Loaded once per process."""
    if name is None or name == BYTES:
        return ByteTokenizer()
    return HuggingFaceTokenizer(name)
