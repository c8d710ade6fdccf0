"""One trial of a sweep: an ordinary `litlab fit`, in a process of its own, that tells the sweep its
validation metric after every epoch and stops when the sweep's pruner says the trial is behind.

The sweep forks each trial from its own process, which has imported litlab once, so a trial starts
in a moment instead of after seconds of imports; the fork then runs `experiments.cli.main` with the
trial's arguments, exactly as the `litlab fit` command would, with its output in the trial's log.
A trial's crash is its own process's, a SIGKILL of the sweep's process group is real for its
trials too, and a trial resumed from its last.ckpt is a plain `--ckpt_path` resume of its run.

The sweep and its trial talk over two pipes (`Channel`): after each validation the trial's
`SweepReport` callback sends the epoch and the metric, and waits for the sweep's answer (go on, or
stop: pruned). The trial stops at the end of that epoch, through `trainer.should_stop`, and ends as
a fit ends: its checkpoints saved, its test run. A trial whose sweep process dies stops itself, as
on SIGTERM: it saves at the next step and exits, to be resumed when the sweep runs again. This
module imports no optuna: a trial's config.yaml names `SweepReport`, and a later `litlab fit` of
that config works without the sweep (the callback then only checks that its metric is logged).
"""

import json
import os
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import lightning as L

from models.errors import ConfigError

CHANNEL: "Channel | None" = None  # set in a trial's process, to the pipes to the sweep that forked it
STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # a fit stopped by a signal, saved: 143, 130


class Channel:
    """The trial's end of its two pipes to the sweep: one line of JSON up, one word down."""

    def __init__(self, send: int, receive: int) -> None:
        self._send, self._receive = send, receive
        self._open = True

    def _write(self, message: dict) -> bool:
        try:
            os.write(self._send, (json.dumps(message) + "\n").encode())
            return True
        except OSError:  # the sweep is gone: the fit goes on alone until its parent watch stops it
            self._open = False
            return False

    def history(self, points: list[tuple[int, float]]) -> None:
        """The metric of the epochs a resumed trial trained before its checkpoint."""
        if self._open:
            self._write({"history": points})

    def report(self, epoch: int, value: float) -> bool:
        """Send one epoch's metric; True when the sweep prunes the trial."""
        if not self._open or not self._write({"epoch": epoch, "value": value}):
            return False
        answer = b""
        while not answer.endswith(b"\n"):
            try:
                chunk = os.read(self._receive, 64)
            except OSError:
                chunk = b""
            if not chunk:
                self._open = False
                return False
            answer += chunk
        return answer.strip() == b"prune"


class SweepReport(L.Callback):
    """Tells the sweep that runs this fit its validation `metric` after every validation, and stops
    the fit at the end of the epoch when the sweep's pruner says so. Outside a sweep it only checks
    that the metric is logged, so a trial's config.yaml trains as any other.

    Args:
        metric: The logged key the sweep ranks its trials by (``val/loss``).
    """

    def __init__(self, metric: str) -> None:
        self.metric = metric

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if CHANNEL is not None and trainer.is_global_zero and trainer.log_dir:
            # A resumed trial's metrics.csv holds the epochs before its checkpoint (and no more).
            CHANNEL.history(epoch_values(Path(trainer.log_dir, "metrics.csv"), self.metric))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val/"))) or "no val/ metric"
            raise ConfigError(f"the sweep's metric {self.metric} is not logged by this experiment (it logs {logged}); "
                              "name one of those as the sweep file's metric.")
        prune = False
        if CHANNEL is not None and trainer.is_global_zero:
            prune = CHANNEL.report(trainer.current_epoch, float(value))
        if trainer.strategy.reduce_boolean_decision(prune, all=False):  # every process stops together
            trainer.should_stop = True


# ---- the sweep's side ----


def epoch_values(path: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of every row of a run's metrics.csv that holds `metric`."""
    from experiments.report import read_metrics

    if not path.is_file():
        return []
    return [(int(row["epoch"]), row[metric]) for row in read_metrics(path) if metric in row and "epoch" in row]


@dataclass
class Outcome:
    """How a trial's fit ended."""

    code: int  # its exit status; negative: killed by that signal
    pruned_at: int | None = None  # the epoch after which the sweep stopped it
    reason: str = ""  # one line, where it failed



@dataclass
class Fit:
    """A `litlab fit` to run in a forked process (see `run`)."""

    args: list[str]
    log: Path  # where its output goes (appended)
    env: dict[str, str | None] = field(default_factory=dict)  # environment changes (None: removed)
    threads: int | None = None  # torch threads, where the sweep shares the machine between trials
    report: Callable[[int, float], bool] | None = None  # (epoch, value) -> prune?; None: no channel
    history: Callable[[list[tuple[int, float]]], None] | None = None
    heartbeat: Callable[[], None] = lambda: None  # called every `beat` seconds while the fit runs
    beat: float = 60.0
    modules: Path | None = None  # where the child writes the names of the modules it has imported, as it ends


RUNNING: set[int] = set()  # the trial processes this process has started and not yet reaped


def stop_running(signum: int = signal.SIGTERM) -> None:
    """Ask every running trial of this process to save and stop."""
    for pid in list(RUNNING):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def run(fit: Fit) -> Outcome:
    """Fork, run `experiments.cli.main(fit.args)` in the child, and serve its reports until it ends."""
    sys.stdout.flush()
    sys.stderr.flush()  # what this process has buffered is not the child's to write again
    up_read, up_write = os.pipe()
    down_read, down_write = os.pipe()
    # A stop signal between the fork and the child's own handlers would run this process's handler there.
    unblocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    pid = os.fork()
    if pid == 0:
        os.close(up_read)
        os.close(down_write)
        _child(fit, up_write, down_read, unblocked)  # never returns
    RUNNING.add(pid)
    signal.pthread_sigmask(signal.SIG_SETMASK, unblocked)
    os.close(up_write)
    os.close(down_read)
    pruned_at = None
    try:
        pruned_at, status = _serve(fit, pid, up_read, down_write)
    finally:
        RUNNING.discard(pid)
        os.close(up_read)
        os.close(down_write)
    code = os.waitstatus_to_exitcode(status)
    if pruned_at is not None and code == 0:
        return Outcome(code, pruned_at)
    return Outcome(code, None, "" if code == 0 else failure_reason(fit.log, code))


def _serve(fit: Fit, pid: int, up: int, down: int) -> tuple[int | None, int]:
    """Answer the trial's reports until it exits: (the epoch it was pruned after, its wait status)."""
    watched = [up]
    try:
        exited = os.pidfd_open(pid)  # readable once the child has exited
        watched.append(exited)
    except (AttributeError, OSError):
        exited = None
    buffer, pruned_at, last_beat = b"", None, time.monotonic()
    try:
        while True:
            timeout = fit.beat if exited is not None else min(fit.beat, 0.2)
            ready, _, _ = select.select(watched, [], [], timeout)
            if up in ready:
                data = os.read(up, 65536)
                if not data:  # the child closed its end (it exited, or its loader workers still hold it)
                    watched.remove(up)
                buffer += data
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    answer = _answer(fit, json.loads(line))
                    if answer is not None:
                        pruned_at = answer if answer >= 0 else pruned_at
                        try:
                            os.write(down, b"prune\n" if answer >= 0 else b"go\n")
                        except OSError:  # the trial has just ended
                            pass
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return pruned_at, status
            if time.monotonic() - last_beat >= fit.beat:
                fit.heartbeat()
                last_beat = time.monotonic()
    finally:
        if exited is not None:
            os.close(exited)


def _answer(fit: Fit, message: dict) -> int | None:
    """None for a message that needs no answer; the epoch for a prune; -1 to go on."""
    if "history" in message:
        if fit.history is not None:
            fit.history([(int(epoch), float(value)) for epoch, value in message["history"]])
        return None
    epoch = int(message["epoch"])
    prune = fit.report is not None and fit.report(epoch, float(message["value"]))
    return epoch if prune else -1


def _child(fit: Fit, up: int, down: int, mask: set) -> None:
    code = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        fit.log.parent.mkdir(parents=True, exist_ok=True)
        out = os.open(fit.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        # New streams on the log: the inherited ones may be a test runner's captures, not the descriptors.
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        os.environ.update({k: v for k, v in fit.env.items() if v is not None})
        for key in [k for k, v in fit.env.items() if v is None]:
            os.environ.pop(key, None)
        sys.argv = [sys.argv[0] if sys.argv else "litlab", *fit.args]  # what a saved run's resume line repeats
        if fit.threads:
            import torch

            torch.set_num_threads(fit.threads)
        global CHANNEL
        CHANNEL = Channel(up, down) if fit.report is not None else None
        threading.Thread(target=_stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
        from experiments.cli import main

        main()  # reads sys.argv, as the console script does
        code = 0
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:  # a bug: its traceback goes to the trial's log, its last line to the sweep
        traceback.print_exc()
        code = 1
    finally:
        try:
            if fit.modules is not None:
                fit.modules.write_text("\n".join(sorted(sys.modules)))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # nothing of the sweep's (its database connections) is closed or flushed here


def warm_up(modules: Path) -> None:
    """Import here what a fit imported as it ran (its data's readers, its metrics' dependencies), so
    that every trial forked from this process starts with them. Imports only: this process must
    not compute with torch, whose thread pool a fork would copy without its threads, and a trial's
    first parallel operation would wait for them forever."""
    import importlib

    for name in modules.read_text().split():
        if name not in sys.modules and not name.startswith(("__", "wandb")):
            try:
                importlib.import_module(name)
            except Exception:  # a module that imports only as part of another, or only where it ran
                continue


def _stop_when_orphaned(parent: int) -> None:
    """Stop the trial as SIGTERM does (it saves, then exits) once the sweep process that forked it is gone."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def failure_reason(log: Path, code: int) -> str:
    """The one line that says why a trial's fit failed: the CLI's error line, else the last line of
    its traceback, else its exit status."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()[-400:] if line.strip()]
    except OSError:
        lines = []
    for line in reversed(lines):
        if line.startswith("litlab: error: "):
            return line.removeprefix("litlab: error: ")[:400]
    for line in reversed(lines):
        if not line.startswith(("File ", "^", "~")) and ("Error" in line or "Exception" in line):
            return line[:400]
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code} (see {log})"
