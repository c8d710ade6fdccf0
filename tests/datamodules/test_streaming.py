"""A corpus streamed by the datasets library: each process and worker reads its own shards once a
pass, evaluation scores every document once, and a streamed fit stopped mid-stream resumes to the
uninterrupted run's weights, bit for bit; a resume on other worker counts is refused in one line."""

from pathlib import Path

import pytest
import torch

from datamodules.streaming import HashSplit, StreamedWindows
from experiments.cli import DEFAULTS
from models.errors import ConfigError
from models.language_model import LanguageModel

GPT = str(DEFAULTS.parent / "text" / "gpt_small.yaml")
TINY = ["--model.backbone.d_model=16", "--model.backbone.depth=1", "--model.backbone.heads=2",
        "--model.backbone.max_len=16", "--data.block_size=16", "--model.sample_prompts=null"]


def corpus(folder: Path, files: int = 4) -> tuple[Path, list[str]]:
    """The pydoc topics as `files` Parquet shards of a text column."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pydoc_data.topics import topics

    pytest.importorskip("datasets")
    texts = [topics[name] for name in sorted(topics)]
    folder.mkdir()
    for k in range(files):
        pq.write_table(pa.table({"text": texts[k::files]}), folder / f"part{k}.parquet")
    return folder, texts


def test_each_process_reads_its_own_shards_and_the_carved_splits_partition_the_documents(tmp_path):
    source, texts = corpus(tmp_path / "corpus")
    read = {}
    for rank in (0, 1):
        stream = StreamedWindows(str(source), "train", "text", "bytes", 16, "causal", train=False, seed=0,
                                 rank=rank, world_size=2)
        read[rank] = list(stream.documents(1))
    assert sorted(read[0] + read[1]) == sorted(texts)  # every document once (two topics share a text)
    assert len(read[0]) == len(set(read[0])) and abs(len(read[0]) - len(read[1])) < 20
    # The hash carving gives each document one split, the same in any order or process.
    splits = {name: HashSplit(0, *edges) for name, edges in {"val": (0, 0.1), "test": (0.1, 0.2), "train": (0.2, 1)}.items()}
    owners = [[name for name, keep in splits.items() if keep(text)] for text in texts]
    assert all(len(owner) == 1 for owner in owners)
    assert 3 <= sum(owner == ["test"] for owner in owners) <= 16  # about a tenth of 79
    # An evaluation stream scores every token of its documents once: its windows put them back together.
    stream = StreamedWindows(str(source), "train", "text", "bytes", 16, "causal", train=False, seed=0, rank=0,
                             world_size=1, keep=splits["test"])
    samples = list(stream)
    scored = torch.cat([s["target"][s["target"] != -100] for s in samples])
    held_out = list(stream.documents(1))
    assert sorted(held_out) == sorted(t for t in texts if splits["test"](t))
    expected = b"".join(t.encode() + b"\x00" for t in held_out)  # END (256) stands as 0 below
    got = bytes(0 if i == 256 else i for i in scored.tolist())
    assert got == expected[1:]  # every token but the very first is a target, once


@pytest.mark.slow
def test_a_streamed_fit_stopped_mid_stream_resumes_bit_identical_and_other_worker_counts_are_refused(
    cli, interrupted_fit, tmp_path
):
    source, _ = corpus(tmp_path / "corpus")
    defaults = tmp_path / "defaults.yaml"
    defaults.write_text(DEFAULTS.read_text().replace("every_n_train_steps: 100", "every_n_train_steps: 4"))
    args = ["fit", "--config", str(defaults), "--config", GPT, *TINY, f"--data.source={source}", "--data.streaming=true",
            "--data.num_workers=2", "--data.batch_size=8", "--trainer.max_steps=14", "--trainer.val_check_interval=7",
            "--trainer.check_val_every_n_epoch=null", "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2"]
    reference = Path(cli(*args).trainer.log_dir)
    interrupted = interrupted_fit(LanguageModel, args, lambda task, batch_idx: task.global_step == 10, reference.parent)
    saved = torch.load(interrupted / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8  # resumed 8 batches into the stream: 4 from each worker
    with pytest.raises(ConfigError, match="saved with 1 process.* and 2 loader worker.* resumes with 1 and 1"):
        cli(*args, "--ckpt_path=last", "--data.num_workers=1")
    resumed = Path(cli(*args, "--ckpt_path=last").trainer.log_dir)
    assert resumed == interrupted
    expected, got = (torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                     for run in (reference, resumed))
    assert all(torch.equal(expected[k], got[k]) for k in expected), [k for k in expected if not torch.equal(expected[k], got[k])]


def test_a_stream_without_max_steps_or_with_more_workers_than_shards_is_one_line(cli, tmp_path):
    source, _ = corpus(tmp_path / "corpus", files=2)
    base = ["fit", "--config", GPT, *TINY, f"--data.source={source}", "--data.streaming=true"]
    with pytest.raises(ConfigError, match="one endless epoch: set --trainer.max_steps"):
        cli(*base)
    with pytest.raises(ConfigError, match="streams in 2 shard.* data.num_workers=3"):
        cli(*base, "--trainer.max_steps=2", "--data.num_workers=3")
    with pytest.raises(ConfigError, match="streaming: true reads a corpus through the datasets library"):
        cli("fit", "--config", GPT, "--data.streaming=true")
