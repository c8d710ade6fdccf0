"""Everything litlab checks and measures on a lent GPU machine, in one go of under 8 minutes, into OUTDIR/gpu.json.

    bash benchmarks/gpu/run.sh OUTDIR               # there, with .whl/ carried (it calls this file)
    .venv/bin/python benchmarks/gpu/measure.py OUTDIR --quick     # here: tiny, float32, about a minute

Steps, each in a process of its own with a time limit, in this order:

- environment: Python, torch and its CUDA, the device, Lightning and jsonargparse (and where it came from);
- pytest_gpu: `pytest -m gpu` over the test files that hold such tests (passed / failed / skipped);
- digits_cnn, cifar_resnet20, gpt_small: `litlab fit` of experiments/digits/cnn.yaml,
  experiments/cifar10/resnet_fast.yaml (on CIFAR-10-shaped noise written in the real format) and
  experiments/text/gpt_small.yaml, each against its bare PyTorch loop (benchmarks/gpu/bare.py):
  samples/s (tokens/s for the GPT), MFU and peak memory of the epochs after the first, and the ratio
  litlab / bare. On CUDA: bf16-mixed, and every recipe compiled; litlab's figures are its speed.csv's;
- gpt_fsdp: experiments/text/gpt_fsdp.yaml on the one GPU for 200 optimizer steps (needs CUDA).

Without CUDA, or with `--quick`, the sizes are tiny, the steps few, float32, nothing compiled, and
gpt_fsdp is skipped with its reason. Each step's outcome is `ok`, `skipped` (with the reason) or
`failed` (with the reason and the last lines of its output); gpu.json is rewritten after each step,
and each step's whole output is in OUTDIR/logs/. Nothing is downloaded. The steps share one budget
(`--budget`, 470 s): a step's limit is cut to leave each later step its floor, and a step that
would get less than its own floor is skipped.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).with_name("workers.py")
TAIL = 40  # lines of a failed step's output kept in gpu.json


@dataclass(frozen=True)
class Step:
    name: str
    timeout: float  # seconds, at most
    floor: float  # seconds it is worth starting with
    cuda_only: bool = False


STEPS = (
    Step("environment", 60, 10),
    Step("pytest_gpu", 150, 30),
    Step("digits_cnn", 90, 30),
    Step("cifar_resnet20", 120, 40),
    Step("gpt_small", 210, 60),
    Step("gpt_fsdp", 240, 90, cuda_only=True),
)


def tail(path: Path, lines: int = TAIL) -> list[str]:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text.splitlines()[-lines:]


def run(command: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int | None, float]:
    """Run `command` with its output in `log`; (exit code, or None where it ran out of time, seconds).
    It runs in a process group of its own, so that a step stopped at its limit takes its children
    (loader workers, the compiler's workers) with it."""
    start = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()
            code = None
    return code, time.perf_counter() - start


def outcome(code: int | None, seconds: float, timeout: float, log: Path) -> dict:
    if code == 0:
        return {"status": "ok", "seconds": round(seconds, 1)}
    reason = f"ran out of its {timeout:.0f} s" if code is None else f"exited with code {code}"
    return {"status": "failed", "seconds": round(seconds, 1), "reason": reason, "last_lines": tail(log)}


def worker(step: Step, quick: bool, logs: Path, scratch: Path, timeout: float) -> dict:
    result_path = scratch / f"{step.name}.json"
    command = [sys.executable, str(WORKERS), step.name, str(result_path), "--work", str(scratch / step.name),
               *(["--quick"] if quick else [])]
    code, seconds = run(command, logs / f"{step.name}.log", timeout)
    result = outcome(code, seconds, timeout, logs / f"{step.name}.log")
    if result_path.is_file():  # what it measured, also of a step stopped part-way
        measured = json.loads(result_path.read_text())
        result.update(measured if code == 0 else {"partial": measured})
    return result


def gpu_test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                  if "pytest.mark.gpu" in p.read_text(errors="replace"))


def pytest_gpu(logs: Path, scratch: Path, timeout: float) -> dict:
    """`pytest -m gpu` over the files that hold such tests: collecting the whole suite would import
    what only other tests need and spend the budget on collection. Where wandb is missing (there),
    benchmarks/gpu/pytest_no_wandb.py turns W&B off in the tests, which tests/conftest.py sets offline."""
    files = gpu_test_files()
    report = scratch / "pytest-gpu.xml"
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "pytest_no_wandb",
               f"--junitxml={report}", *files]
    path = os.pathsep.join(filter(None, [str(WORKERS.parent), os.environ.get("PYTHONPATH")]))
    log = logs / "pytest_gpu.log"
    code, seconds = run(command, log, timeout, env={**os.environ, "PYTHONPATH": path})
    counts = {}
    if report.is_file():
        suites = ET.parse(report).getroot()
        suites = [suites] if suites.tag == "testsuite" else list(suites)
        total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
        counts = {"passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
                  "failed": total["failures"], "errors": total["errors"], "skipped": total["skipped"]}
    result = outcome(code, seconds, timeout, log)
    if code == 1 and counts:  # tests failed: the counts say how many, the lines which
        result["reason"] = f"{counts['failed']} failed and {counts['errors']} errors"
    return {**result, "files": files, "exit_code": code, **counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, few steps, float32, no compile (automatic without CUDA)")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for all steps together (default: 470)")
    args = parser.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    logs = args.outdir / "logs"
    logs.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="litlab-gpu-"))  # results on their way; runs live in the workers' own
    deadline = time.monotonic() + args.budget
    report = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "budget_s": args.budget,
              "quick": args.quick, "steps": {}}
    out = args.outdir / "gpu.json"
    started = time.perf_counter()

    def save() -> None:
        report["seconds"] = round(time.perf_counter() - started, 1)
        out.write_text(json.dumps(report, indent=1) + "\n")

    try:
        steps(report, args, logs, scratch, deadline, save)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    failed = [name for name, r in report["steps"].items() if r["status"] == "failed"]
    print(f"{out}: {len(STEPS) - len(failed)} of {len(STEPS)} steps ok or skipped, {report['seconds']} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    sys.exit(1 if failed else 0)


def steps(report: dict, args: argparse.Namespace, logs: Path, scratch: Path, deadline: float, save) -> None:
    cuda = False
    for i, step in enumerate(STEPS):
        quick = report["quick"]
        if step.cuda_only and not cuda:
            result = {"status": "skipped", "reason": "needs CUDA, which this machine lacks"}
        elif step.cuda_only and quick:
            result = {"status": "skipped", "reason": "--quick leaves it out"}
        else:
            later = sum(s.floor for s in STEPS[i + 1:] if not (s.cuda_only and (quick or not cuda)))
            timeout = min(step.timeout, deadline - time.monotonic() - later)
            if timeout < step.floor:
                result = {"status": "skipped", "reason": f"the {args.budget:.0f} s budget left it {max(timeout, 0):.0f} s, "
                                                         f"under the {step.floor:.0f} s it needs"}
            elif step.name == "pytest_gpu":
                result = pytest_gpu(logs, scratch, timeout)
            else:
                result = worker(step, quick, logs, scratch, timeout)
        report["steps"][step.name] = result
        if step.name == "environment":
            cuda = bool(result.get("cuda_available"))
            if not cuda and not report["quick"]:
                report["quick"], report["quick_reason"] = True, "no CUDA: the CPU sizes"
        print(f"{step.name}: {result['status']}" + "".join(f", {result[k]}" for k in ("reason", "seconds") if k in result),
              flush=True)
        save()


if __name__ == "__main__":
    main()
