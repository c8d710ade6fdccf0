"""Speed: every run reports its samples (and tokens) per second, FLOPs per batch, MFU and peak
memory each epoch, in speed.csv beside (never inside) metrics.csv, and in its closing lines."""

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from callbacks.speed import FIELDS, cpu_peak_flops, tokens_in
from experiments.cli import DEFAULTS

EXPERIMENTS = DEFAULTS.parent


def rows(run) -> list[dict]:
    return list(csv.DictReader(open(Path(run.trainer.log_dir) / "speed.csv")))


def test_each_epoch_reports_the_mlps_flops_its_speed_and_memory_apart_from_its_metrics(cli, capsys, litlab_main):
    run = cli("fit", "--config", str(EXPERIMENTS / "digits" / "mlp.yaml"), "--trainer.max_epochs=2",
              "--trainer.limit_train_batches=4")
    speed = rows(run)
    assert [int(r["epoch"]) for r in speed] == [0, 1] and [int(r["step"]) for r in speed] == [4, 8]
    # A Linear layer's forward is 2*B*in*out FLOPs; its backward twice that, but for the first
    # layer, whose input needs no gradient. Nothing else of an MLP multiplies matrices.
    linears = [m for m in run.model.backbone.modules() if isinstance(m, nn.Linear)] + [run.model.head]
    b = run.datamodule.batch_size
    expected = sum((4 if i == 0 else 6) * b * m.in_features * m.out_features for i, m in enumerate(linears))
    for r in speed:
        assert int(r["flops_per_batch"]) == expected
        seconds, steps = float(r["train_seconds"]), 4
        assert float(r["samples_per_s"]) == pytest.approx(steps * b / seconds, rel=1e-9)
        assert float(r["mfu"]) == pytest.approx(expected * steps / seconds / float(r["peak_flops"]), rel=1e-9)
        assert 0 < float(r["mfu"]) < 1 and float(r["peak_memory_gb"]) > 0.05 and r["tokens_per_s"] == ""
    # The count is checkpointed: a resumed fit does not count again (its first batch would round otherwise).
    saved = torch.load(Path(run.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    assert [state for key, state in saved.items() if key.startswith("Speed")] == [{"flops": expected}]
    with open(Path(run.trainer.log_dir) / "metrics.csv") as f:  # metrics a resumed run reproduces to the byte
        speed_only = set(FIELDS) - {"epoch", "step"}
        assert not any(key in speed_only or key.startswith("speed") for key in next(csv.reader(f)))
    closing = [line for line in capsys.readouterr().out.splitlines() if line.startswith("speed (epoch 2)")]
    assert closing and "samples/s" in closing[0] and "MFU" in closing[0] and "peak memory" in closing[0]
    # litlab report plots them and states the last epoch's.
    code, _, err = litlab_main("report", run.trainer.log_dir)
    assert code == 0, err
    report = Path(run.trainer.log_dir) / "report"
    assert (report / "speed.png").is_file() and (report / "mfu.png").is_file()
    assert f"Last epoch (2): {float(speed[-1]['samples_per_s']):,.0f} samples/s" in (report / "report.md").read_text()


@pytest.mark.slow
def test_a_language_model_reports_its_tokens_per_second(cli):
    run = cli("fit", "--config", str(EXPERIMENTS / "text" / "gpt_small.yaml"), "--model.backbone.d_model=16",
              "--model.backbone.depth=1", "--model.backbone.heads=2", "--model.backbone.max_len=16",
              "--data.block_size=16", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
              "--trainer.limit_val_batches=1", "--model.sample_prompts=null")
    (r,) = rows(run)
    # A training window has no padding: its tokens are its block_size.
    assert float(r["tokens_per_s"]) == pytest.approx(16 * float(r["samples_per_s"]), rel=1e-6)
    assert int(r["flops_per_batch"]) > 0


def test_tokens_are_counted_without_padding_and_only_for_token_ids():
    padding = torch.tensor([[False, False, True], [False, True, True]])
    assert tokens_in({"input": torch.zeros(2, 3, dtype=torch.long), "padding_mask": padding}) == 3
    assert tokens_in({"input": torch.zeros(2, 3)}) == 0  # images, features: no tokens


def test_the_cpu_peak_is_measured_once_and_cached(tmp_path):
    cache = tmp_path / "cpu_peak.json"
    peak = cpu_peak_flops(torch.float32, cache)
    assert peak > 1e8  # any CPU multiplies faster than 0.1 GFLOP/s
    (key,) = json.loads(cache.read_text())
    cache.write_text(json.dumps({key: 123.0}))
    assert cpu_peak_flops(torch.float32, cache) == 123.0  # read back, not measured again


def test_a_half_written_or_unwritable_cpu_peak_cache_is_measured_again_not_fatal(tmp_path):
    # Two ranks measuring at once once left a reader with half a file: it must never stop a run.
    cache = tmp_path / "cpu_peak.json"
    cache.write_text('{"x86_64 some cpu thr')
    assert cpu_peak_flops(torch.float32, cache) > 1e8
    assert len(json.loads(cache.read_text())) == 1  # rewritten whole
    assert [p.name for p in tmp_path.iterdir()] == ["cpu_peak.json"]  # no partial file left behind
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert cpu_peak_flops(torch.float32, blocked / "litlab" / "cpu_peak.json") > 1e8  # its folder cannot be made
