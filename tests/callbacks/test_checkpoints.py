"""Checkpoints on disk: written whole or not at all."""

import os
from pathlib import Path

import pytest
import torch

from callbacks import AtomicCheckpointIO, DiskFull


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_checkpoint_is_written_whole_or_not_at_all_and_a_full_disk_is_one_line(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"w": torch.ones(3)}, tmp_path / "a.ckpt")
    assert torch.equal(torch.load(tmp_path / "a.ckpt", weights_only=True)["w"], torch.ones(3))
    # The next one is written through its hidden file into /dev/full, which refuses every write (ENOSPC).
    (tmp_path / ".b.ckpt.tmp").symlink_to("/dev/full")
    with pytest.raises(DiskFull) as full:
        io.save_checkpoint({"w": torch.ones(100_000)}, tmp_path / "b.ckpt")
    assert str(full.value).startswith(f"The disk holding {tmp_path} is full: a checkpoint of 0.4 MiB did not fit")
    assert "last.ckpt still names the newest whole checkpoint" in str(full.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt"]  # no half file, under any name
    io.save_checkpoint({"w": torch.zeros(3)}, tmp_path / "a.ckpt")  # replaced whole
    assert torch.equal(torch.load(tmp_path / "a.ckpt", weights_only=True)["w"], torch.zeros(3))
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["a.ckpt"]


def test_a_held_checkpoint_is_taken_now_and_written_only_when_told(tmp_path):
    io = AtomicCheckpointIO()
    state = {"w": torch.ones(3)}
    with io.holding():
        io.save_checkpoint(state, tmp_path / "held.ckpt")
    state["w"] += 1  # training goes on; the held file keeps the state it was given
    assert not list(tmp_path.iterdir())
    io.write_held()
    assert torch.equal(torch.load(tmp_path / "held.ckpt", weights_only=True)["w"], torch.ones(3))
    with io.holding():
        io.save_checkpoint(state, tmp_path / "dropped.ckpt")
    io.drop_held()
    io.write_held()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.ckpt"]
