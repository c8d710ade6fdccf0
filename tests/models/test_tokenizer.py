"""Tokenizers: litlab's bytes and a Hugging Face tokenizer behind one interface; a BPE tokenizer
trained on the embedded corpus's training split round-trips text and loads as transformers'."""

import json

import pytest
import torch

from datamodules.text import TextDataModule
from models.errors import ConfigError
from models.tokenizer import BYTES, HuggingFaceTokenizer, load_tokenizer

TEXTS = ["def f(x):\n    return x ** 2", "Grüße, 世界 🐍", "  leading spaces and a tab\t"]


def test_a_bpe_tokenizer_trained_on_the_training_split_round_trips_text_and_loads_in_transformers(bpe_tokenizer):
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(str(bpe_tokenizer))  # plain transformers, nothing of litlab's
    tok = load_tokenizer(str(bpe_tokenizer))
    assert isinstance(tok, HuggingFaceTokenizer) and tok.vocab_size == len(plain) == 512
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids.tolist() == plain(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text  # byte-level BPE: every text comes back exactly
    # Merges learnt from Python's documentation: common words are one token, so fewer ids than bytes.
    assert len(tok.encode("the return statement")) < len("the return statement") / 2
    assert {tok.end_id, tok.pad_id, tok.mask_id} == {plain.eos_token_id, plain.pad_token_id, plain.mask_token_id}
    summary = json.loads((bpe_tokenizer / "litlab.json").read_text())
    data = TextDataModule(cache_dir=str(bpe_tokenizer.parent / "cache"))
    train = data.split_texts("train")
    assert summary["trained_on"]["documents"] == len(train)
    assert not set(train) & set(data.split_texts("test"))  # no held-out text was learnt from


def test_the_text_cache_is_keyed_by_the_tokenizer_and_stores_ids_in_the_smallest_type(bpe_tokenizer, tmp_path):
    byte_level = TextDataModule(cache_dir=str(tmp_path))
    bpe = TextDataModule(tokenizer=str(bpe_tokenizer), cache_dir=str(tmp_path))
    byte_path, byte_bounds = byte_level.cached_corpus()
    bpe_path, bpe_bounds = bpe.cached_corpus()
    assert byte_path.suffix == ".u8" and bpe_path.suffix == ".u16" and byte_path.stem != bpe_path.stem
    assert bpe.vocab_size == 512 and byte_level.vocab_size == 259
    ids = torch.from_numpy(__import__("numpy").fromfile(bpe_path, dtype="uint16").astype("int64"))
    tok = bpe.tokenizer
    # Each document closed by the end token; the test split decodes to the byte-level split's text.
    start, end = bpe_bounds["test"]
    text = tok.decode(ids[start:end])
    assert (ids[start:end] == tok.end_id).sum() == len(byte_level.split_texts("test"))
    assert text == "".join(byte_level.split_texts("test"))
    # The same documents in each split whatever the tokenizer, so bits per byte compare: the bytes a
    # split covers are the same, and with bytes a token is a byte.
    assert byte_level.tokens_per_byte == {"train": 1.0, "val": 1.0, "test": 1.0}
    for split, (first, last) in bpe_bounds.items():
        size = byte_bounds[split][1] - byte_bounds[split][0]
        assert bpe.tokens_per_byte[split] == pytest.approx((last - first) / size)
        assert 0.2 < bpe.tokens_per_byte[split] < 0.5  # a few bytes a token
    # A second module finds the cache (and its byte counts) instead of encoding again.
    again = TextDataModule(tokenizer=str(bpe_tokenizer), cache_dir=str(tmp_path))
    assert again.cached_corpus() == (bpe_path, bpe_bounds) and again.tokens_per_byte == bpe.tokens_per_byte


def test_masked_windows_write_the_tokenizers_own_mask_and_pad(bpe_tokenizer, tmp_path):
    data = TextDataModule(tokenizer=str(bpe_tokenizer), objective="masked", block_size=32, cache_dir=str(tmp_path))
    data.setup("fit")
    tok = data.tokenizer
    batch = [data.val_dataset[i] for i in range(len(data.val_dataset))]
    inputs = torch.stack([b["input"] for b in batch])
    targets = torch.stack([b["target"] for b in batch])
    scored = targets != -100
    assert scored.float().mean() == pytest.approx(0.15, abs=0.03)
    assert (inputs[scored] == tok.mask_id).float().mean() == pytest.approx(0.8, abs=0.1)
    assert inputs.max() < tok.vocab_size
    last = batch[-1]
    assert (last["input"][last["padding_mask"]] == tok.pad_id).all()


def test_a_pretrained_models_tokenizer_adds_its_special_tokens_to_each_text(tmp_path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "model", "learns", "##s", "text"]
    BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(str(tmp_path / "bert"))
    tok = load_tokenizer(str(tmp_path / "bert"))
    tokens, padding = tok.tokenize(["the model learns", b"text"], max_len=6)
    assert tokens.tolist() == [[2, 5, 6, 7, 3, 0], [2, 9, 3, 0, 0, 0]]  # [CLS] ... [SEP], then [PAD]
    assert padding.tolist() == [[False] * 5 + [True], [False] * 3 + [True] * 3]
    assert tok.end_id == 3 and tok.mask_id == 4 and tok.vocab_size == len(vocab)  # BERT has no EOS: [SEP] ends
    assert load_tokenizer(BYTES).tokenize(["ab"], 3)[0].tolist() == [[97, 98, 257]]


def test_a_tokenizer_that_cannot_be_loaded_is_one_line(tmp_path, monkeypatch):
    # HF_HUB_OFFLINE=1, as huggingface_hub reads it once at import: no request leaves the machine
    # (online, the library retries an unreachable Hub for most of a minute).
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no tokenizer files"):
        load_tokenizer(str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="neither a folder nor a Hub id"):
        load_tokenizer("no-such-user/no-such-tokenizer")
