"""Byte-level text: the tokenizer round-trips any text, the cache is built once and rebuilt when
the source changes, splits never share a window, evaluation scores every token once, masking
follows BERT's recipe, and a file that is not UTF-8 is named."""

import time
from pathlib import Path

import pytest
import torch

from models.contract import IGNORE_INDEX
from datamodules.text import TextDataModule
from models.tokenizer import END, MASK, PAD, VOCAB_SIZE, decode, encode
from models.errors import ConfigError


@pytest.mark.parametrize("text", ["plain ASCII", "héllo wörld — naïve café", "日本語のテキスト", "emoji 🐍🔥", "", "a\x00b"])
def test_decoding_the_encoding_gives_back_the_text(text):
    ids = encode(text)
    assert ids.dtype == torch.long and bool((ids < 256).all())
    assert decode(ids) == text


def test_special_tokens_sit_above_the_bytes_and_are_dropped_when_decoding():
    assert (END, PAD, MASK, VOCAB_SIZE) == (256, 257, 258, 259)
    assert decode([104, 105, END, PAD, MASK, 33]) == "hi!"


def corpus(folder: Path, files: int = 4, size: int = 3000) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"doc{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * (size // 27), encoding="utf-8")
    return folder


def test_the_embedded_corpus_is_pythons_documentation_split_three_ways(tmp_path):
    dm = TextDataModule(block_size=64, cache_dir=str(tmp_path))
    dm.setup("fit")
    sizes = dm.tokens_per_split
    assert 400_000 < sum(sizes.values()) < 600_000  # pydoc_data.topics, one document per topic
    assert all(size > 0 for size in sizes.values())
    assert dm.vocab_size == VOCAB_SIZE and dm.num_classes is None
    assert dm.example_input.shape == (2, 64) and dm.example_input.dtype == torch.long
    assert "def" in decode(dm.train_dataset[0]["input"]) or len(decode(dm.train_dataset[0]["input"])) > 0


def test_the_cache_is_built_once_and_rebuilt_when_the_source_changes(tmp_path):
    source, cache = corpus(tmp_path / "text"), tmp_path / "cache"
    TextDataModule(source=str(source), block_size=32, cache_dir=str(cache)).load()
    (cached,) = cache.glob("*.u8")
    built = cached.stat().st_mtime_ns
    time.sleep(0.01)
    TextDataModule(source=str(source), block_size=32, cache_dir=str(cache)).load()
    assert cached.stat().st_mtime_ns == built and len(list(cache.glob("*.u8"))) == 1  # read, not rebuilt
    (source / "doc0.txt").write_text("changed " * 400, encoding="utf-8")
    TextDataModule(source=str(source), block_size=32, cache_dir=str(cache)).load()
    assert len(list(cache.glob("*.u8"))) == 2  # a new cache for the new text


def test_a_file_that_is_not_utf8_is_named_with_the_fix(tmp_path):
    source = corpus(tmp_path / "text")
    (source / "latin1.txt").write_bytes("café crème".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.txt is not UTF-8 text \(byte 0xe9 at offset 3\); convert it"):
        TextDataModule(source=str(source), cache_dir=str(tmp_path / "cache")).load()


def test_a_source_without_text_files_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="No .txt files at"):
        TextDataModule(source=str(tmp_path), cache_dir=str(tmp_path / "cache")).load()


@pytest.mark.parametrize("split_by", ["document", "position"])
def test_evaluation_windows_score_every_token_of_their_split_once(tmp_path, split_by):
    dm = TextDataModule(source=str(corpus(tmp_path / "text", files=6)), block_size=50, split_by=split_by,
                        val_fraction=0.2, test_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    splits = dm.load()
    for dataset, name in ((splits.val, "val"), (splits.test, "test")):
        windows = [dataset[i] for i in range(len(dataset))]
        targets = torch.cat([w["target"] for w in windows])
        scored = targets[targets != IGNORE_INDEX]
        assert len(scored) == dm.tokens_per_split[name] - 1  # every token but the first is a target, once
        tokens = torch.cat([w["input"][~w["padding_mask"]] for w in windows])
        assert torch.equal(tokens[1:], scored[:-1])  # each target is the next input token
    assert sum(dm.tokens_per_split.values()) == sum(len(f.read_bytes()) + 1 for f in (tmp_path / "text").iterdir())


def test_training_windows_are_random_places_seeded_by_epoch_and_index(tmp_path):
    dm = TextDataModule(block_size=32, cache_dir=str(tmp_path))
    train = dm.load().train
    first = train[5]["input"]
    assert torch.equal(first, train[5]["input"])  # the same (epoch, index), the same window
    train.epoch = 1
    assert not torch.equal(first, train[5]["input"])  # a new epoch, a new place
    window = train[7]
    assert torch.equal(window["input"][1:], window["target"][:-1])  # the target is the input shifted by one


def test_masking_follows_berts_recipe(tmp_path):
    dm = TextDataModule(objective="masked", block_size=128, cache_dir=str(tmp_path))
    train = dm.load().train
    chosen = masked = randomised = total = 0
    for i in range(200):
        sample = train[i]
        picked = sample["target"] != IGNORE_INDEX
        total += picked.numel()
        chosen += int(picked.sum())
        masked += int((sample["input"][picked] == MASK).sum())
        randomised += int(((sample["input"] != sample["target"]) & picked & (sample["input"] != MASK)).sum())
        assert not bool((sample["input"][~picked] == MASK).any())  # only chosen positions are corrupted
    assert chosen / total == pytest.approx(0.15, abs=0.01)
    assert masked / chosen == pytest.approx(0.8, abs=0.03)
    assert randomised / chosen == pytest.approx(0.1, abs=0.03)  # (a random byte may equal the original)


def test_a_block_longer_than_a_split_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="shorter than block_size"):
        TextDataModule(source=str(corpus(tmp_path / "text")), block_size=4096,
                       cache_dir=str(tmp_path / "cache")).load()


def test_the_default_cache_lives_in_the_users_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    TextDataModule(source=str(corpus(tmp_path / "text")), block_size=32).load()
    assert list((tmp_path / "xdg" / "litlab" / "text").glob("*.u8"))


def test_a_datasets_corpus_keeps_its_own_splits_one_document_a_row(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = {split: [f"{split} document {i}: " + "words " * (5 + i) for i in range(n)]
            for split, n in (("train", 12), ("validation", 3), ("test", 4))}
    datasets.DatasetDict({split: datasets.Dataset.from_dict({"body": texts, "n": list(range(len(texts)))})
                          for split, texts in rows.items()}).save_to_disk(str(tmp_path / "corpus"))
    dm = TextDataModule(source=str(tmp_path / "corpus"), text_column="body", cache_dir=str(tmp_path / "cache"),
                        block_size=8)
    path, bounds = dm.cached_corpus()
    data = path.read_bytes()
    for split, own in (("val", "validation"), ("test", "test")):
        start, end = bounds[split]
        assert data[start:end].split(bytes([0xFF]))[:-1] == [t.encode() for t in rows[own]]  # in the data's order
    start, end = bounds["train"]
    assert sorted(data[start:end].split(bytes([0xFF]))[:-1]) == sorted(t.encode() for t in rows["train"])
    with pytest.raises(ConfigError, match="'text' is not a column .* its columns are body, n"):
        TextDataModule(source=str(tmp_path / "corpus"), cache_dir=str(tmp_path / "cache")).cached_corpus()


def test_a_parquet_corpus_without_splits_is_split_by_documents_seeded(tmp_path):
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = [f"note {i} " + "x" * (10 + 3 * i) for i in range(20)]
    pq.write_table(pa.table({"text": texts}), tmp_path / "notes.parquet")
    dm = TextDataModule(source=str(tmp_path / "notes.parquet"), cache_dir=str(tmp_path / "cache"), block_size=4,
                        val_fraction=0.2, test_fraction=0.2)
    path, bounds = dm.cached_corpus()
    data = path.read_bytes()
    parts = {name: data[a:b].split(bytes([0xFF]))[:-1] for name, (a, b) in bounds.items()}
    assert sorted(sum(parts.values(), [])) == sorted(t.encode() for t in texts)  # every row once, whole
    assert all(len(parts[name]) >= 3 for name in ("val", "test"))  # about a fifth of the bytes each
