"""What the in-process recipe benchmarks share (precision.py, compile.py, race.py): one thread in a
scratch folder, `litlab fit` run quietly with its fit timed, and gpt_small.yaml narrowed as the
language-model test narrows it. Imported by the scripts beside it (their folder is on sys.path)."""

import contextlib
import gc
import io
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from experiments.cli import DEFAULTS, LitlabCLI

QUIET = ("--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false")
# gpt_small.yaml narrowed as tests/models/test_language_model.py narrows it.
NARROW_GPT = ["--model.backbone.d_model=64", "--model.backbone.depth=2", "--model.backbone.max_len=64",
              "--data.block_size=64", "--model.sample_prompts=null"]


class TimedCLI(LitlabCLI):
    """LitlabCLI that times `trainer.fit` alone (`seconds`) and keeps the fit's metrics (`fitted`) before
    the closing test, which is not timed, replaces them."""

    def before_fit(self) -> None:
        gc.collect()  # neither side pays for the other's garbage
        self.start = time.perf_counter()

    def after_fit(self) -> None:
        self.seconds = time.perf_counter() - self.start
        self.fitted = dict(self.trainer.callback_metrics)
        super().after_fit()


def fit(args: list[str], cli: type[LitlabCLI] = TimedCLI) -> LitlabCLI:
    """`litlab fit ARGS` in this process, its progress bar, summary and closing lines kept off the table."""
    with contextlib.redirect_stdout(io.StringIO()):
        return cli(args=["fit", *args, *QUIET])


def fit_recipe(recipe: str, flags: list[str], seed: int) -> TimedCLI:
    """`litlab fit` of experiments/RECIPE.yaml (`digits/cnn`) with FLAGS and `seed`, as `fit` runs it."""
    return fit(["--config", str(DEFAULTS.parent / f"{recipe}.yaml"), *flags, f"--seed_everything={seed}"])


def last_validation(cli: TimedCLI) -> tuple[str, float]:
    """(the key, the value) of the fit's last validation metric: bits per byte, else accuracy."""
    metrics = cli.fitted
    key = "val/bpb" if "val/bpb" in metrics else "val/acc"
    return key, float(metrics[key])


def one_thread_in_scratch(prefix: str) -> None:
    """One torch thread, a scratch working folder for the runs, the CLI reading args= only, no banners."""
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix=prefix))
    sys.argv = sys.argv[:1]
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
