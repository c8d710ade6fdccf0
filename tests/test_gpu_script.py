"""benchmarks/gpu/measure.py, the one prepared script for a lent GPU machine, runs end to end on a CPU
(`--quick`: tiny sizes, float32, no compile) and writes every step's outcome and figures to gpu.json."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["environment", "pytest_gpu", "digits_cnn", "cifar_resnet20", "gpt_small", "gpt_fsdp"]
SIDES = ("litlab", "bare")


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_on_a_cpu_and_sets_each_recipe_against_its_bare_loop(tmp_path: Path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu" / "measure.py"), str(out), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu.json").read_text())
    steps = report["steps"]
    assert list(steps) == STEPS
    assert report["quick"] is True

    environment = steps["environment"]
    assert environment["status"] == "ok"
    assert environment["torch"] == __import__("torch").__version__ and environment["lightning"]
    cuda = environment["cuda_available"]

    tests = steps["pytest_gpu"]
    assert tests["status"] == "ok" and tests["failed"] == tests["errors"] == 0
    assert tests["passed" if cuda else "skipped"] >= 2  # the gpu tests ran, or without CUDA were skipped

    fsdp = steps["gpt_fsdp"]  # needs CUDA, and --quick leaves it out anyway
    assert fsdp["status"] == "skipped" and fsdp["reason"]

    for name in ("digits_cnn", "cifar_resnet20", "gpt_small"):
        step = steps[name]
        assert step["status"] == "ok", (name, step)
        assert step["device"] == "cpu" and step["precision"] == "32-true" and step["compile"] is False
        litlab, bare = step["litlab"], step["bare"]
        keys = ["samples_per_s", "mfu", "peak_memory_gb"] + (["tokens_per_s"] if name == "gpt_small" else [])
        for side in (litlab, bare):
            assert all(side[key] > 0 for key in keys), (name, side)
        # The same network and batches on both sides: the same FLOPs a step, the same steps timed.
        assert litlab["flops_per_batch"] == bare["flops_per_batch"] > 0
        assert litlab["steps"] == bare["steps"] > 0
        assert set(step["ratio"]) == set(keys)
        for key in keys:
            assert step["ratio"][key] == pytest.approx(litlab[key] / bare[key])
    assert (out / "logs" / "gpt_small.log").is_file()
