"""Shared test set-up: every test runs in its own directory, W&B offline, one thread per process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run each test in a fresh directory with W&B offline and no W&B credentials."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials leak in
    monkeypatch.setattr(sys, "argv", ["litlab"])  # in-process CLIs read only their args=
    return tmp_path


@pytest.fixture(autouse=True, scope="session")
def torch_threads() -> None:
    torch.set_num_threads(1)


def run_litlab(
    *args: str, cwd: Path | None = None, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`env` entries are added to this process's environment; a None value removes one."""
    command = [str(Path(sys.executable).with_name("litlab")), *args]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={key: value for key, value in environment.items() if value is not None},
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="session")
def litlab():
    """Run the real `litlab` console script in a subprocess, as a user would."""
    return run_litlab


def read_wandb_run(run_dir: Path) -> dict:
    """Read an offline W&B run back from its transaction log (`run-<id>.wandb`).

    The log is a LevelDB-style record file: a 7-byte file header, then 32 KiB blocks of
    chunks, each with a 7-byte header (crc32, length, type); FULL/LAST chunks end a
    protobuf `Record`. Returns the run's name, project and tags, its config, and the history
    rows that were logged.
    """
    import json
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    block, header = 32768, 7
    pos, chunks, config, history, run = header, [], {}, [], {}
    while pos + header <= len(data):
        if block - pos % block < header:  # the rest of a block too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + header])
        if kind == 0:
            break
        chunks.append(data[pos + header : pos + header + length])
        pos += header + length
        if kind in (1, 4):  # FULL or LAST: a whole record is assembled
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            field = record.WhichOneof("record_type")
            if field == "history":
                history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
            if field == "run":
                run = {"name": record.run.display_name, "project": record.run.project, "tags": list(record.run.tags)}
            if field in ("config", "run"):
                items = record.config.update if field == "config" else record.run.config.update
                config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items})
    return {**run, "config": config, "history": history}


@pytest.fixture
def wandb_run():
    """Reader for an offline W&B run directory: {'name', 'project', 'tags', 'config', 'history'}."""
    return read_wandb_run
