"""Byte-level tokens, the one tokenizer every text consumer uses: language-model corpora, captions,
text classification and generation.

The vocabulary is the 256 byte values plus END (end of a document), PAD and MASK. Any text in
any language is its UTF-8 bytes, so decoding gives back exactly what was encoded, and nothing
needs a download.
"""

from collections.abc import Sequence

import torch

END, PAD, MASK = 256, 257, 258
VOCAB_SIZE = 259
SEPARATOR = 0xFF  # END on disk: never a byte of UTF-8 text


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
