"""`litlab sweep --config EXPERIMENT.yaml --sweep SWEEP.yaml`: a hyperparameter search with Optuna.

The sweep file (experiments/sweeps/, see docs/sweeps.md) names the metric and its direction, the
search space over any config key, the sampler, the pruner, the number of trials, the seeds each
trial is trained on (and the folds, for K-fold cross-validation) and the storage. Before any trial starts, every value of the space (each end
of a range, each choice) is tried in a one-step fit, so that a key the experiment does not have,
or a value its constructor refuses, is one line. Each trial is then an ordinary litlab run, forked
from this process (`experiments.sweep_trial`): `<folder>/trial_NNNN/version_0`, with its config.yaml,
checkpoints and a W&B run grouped under the sweep's name; it reports its metric every epoch to the
pruner, and its value is the best the metric reached (the mean over its seeds).

The study lives in Optuna's storage: an SQLite file in the sweep's folder by default, a journal file
for shared file systems, or a PostgreSQL / MySQL URL. `--workers N` runs N trials at once, and the
same command on other machines that share the storage and the folder takes trials from the same
study. A trial is claimed under the folder's lock (`sweep.lock`) and held by its worker's lock
(`trial_NNNN/trial.lock`) while it runs; one whose worker is gone (killed, or silent for `STALE`
seconds on another machine) is failed and queued again with the same values, under its own number's
folder, so it resumes from its last.ckpt. A trial counts once, under the number it started with.
SIGTERM or SIGINT stops every running trial where it saves, and the sweep says how to continue.
`--wandb FILE` writes the same sweep as a W&B sweep configuration instead of running it, and
`litlab report FOLDER` (experiments/sweep_report.py) reports what a sweep found.
"""

import argparse
import csv
import fcntl
import json
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import yaml

from experiments import sweep_trial
from experiments.report import read_metrics, spread
from experiments.runs import newest_fit
from models.errors import ConfigError

HOST = socket.gethostname()
KEYS = ("name", "metric", "direction", "trials", "seeds", "folds", "sampler", "pruner", "storage", "folder", "fixed", "space")
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "grid": "GridSampler"}
PRUNERS = {"median": "MedianPruner", "hyperband": "HyperbandPruner", "none": "NopPruner"}
HEARTBEAT = 60.0  # seconds between a running trial's signs of life in the study
STALE = 600.0  # a trial of another machine silent this long is taken over
CHECK = ("--trainer.fast_dev_run=1", "--trainer.enable_model_summary=false")
QUIET = ("--trainer.enable_progress_bar=false",)  # a trial's output is a log file; EpochLine writes a line an epoch
STOP: list[int] = []  # the stop signal this process received
WORKERS: list[int] = []  # the worker processes this process forked


@dataclass(frozen=True)
class Param:
    """One key of the space: a range (`low`, `high`, optionally `log` or `step`) or `choices`."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple = ()

    @property
    def integer(self) -> bool:
        ends = (self.low, self.high, self.step if self.step is not None else 1)
        return not self.choices and all(type(v) is int for v in ends)

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.choices:
            return CategoricalDistribution([label(choice) for choice in self.choices])
        if self.integer:
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def grid(self) -> list | None:
        """The grid's values (as Optuna holds them), or None for a range without steps."""
        if self.choices:
            return [label(choice) for choice in self.choices]
        if self.step is None:
            return None
        count = int(round((self.high - self.low) / self.step)) + 1
        return [self.low + i * self.step for i in range(count) if self.low + i * self.step <= self.high + 1e-12]

    def checked(self) -> list:
        """The values a fit tries before the sweep: each choice, or both ends of the range."""
        return list(self.choices) if self.choices else [self.low, self.high]

    def value(self, held):
        """The config value of what Optuna holds."""
        if self.choices:
            return next(choice for choice in self.choices if label(choice) == held)
        return held


def label(choice):
    """How Optuna holds a choice: itself when it is a scalar, else its JSON."""
    return choice if choice is None or isinstance(choice, (bool, int, float, str)) else json.dumps(choice, sort_keys=True)


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_param(key: str, spec, where: str) -> Param:
    shape = ("must be {low: A, high: B} (log: true for a log scale, step: S for steps) or {choices: [A, B, ...]}; "
             f"got {spec!r}")
    if not isinstance(spec, dict) or set(spec) - {"low", "high", "log", "step", "choices"} \
            or ("choices" in spec) == ({"low", "high"} <= set(spec)):
        raise ConfigError(f"{where}: space.{key} {shape}.")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices or len({json.dumps(label(c)) for c in choices}) < len(choices):
            raise ConfigError(f"{where}: space.{key} choices must be a list of distinct values; got {choices!r}.")
        return Param(key, choices=tuple(choices))
    low, high, step, log = spec["low"], spec["high"], spec.get("step"), spec.get("log", False)
    if not (number(low) and number(high) and low < high) or (step is not None and not (number(step) and step > 0)):
        raise ConfigError(f"{where}: space.{key} needs numbers low < high (and a positive step); got {spec!r}.")
    if not isinstance(log, bool) or (log and (low <= 0 or step is not None)):
        raise ConfigError(f"{where}: space.{key} log: true needs low > 0 and no step; got {spec!r}.")
    return Param(key, low, high, log, step)


@dataclass(frozen=True)
class Sweep:
    path: Path
    name: str
    metric: str
    direction: str  # minimize | maximize
    trials: int
    seeds: tuple[int, ...] | None  # None: the experiment's own seed
    folds: int | None  # K-fold cross-validation of each trial's values (data.folds); None: the data's own split
    sampler: tuple[str, dict]
    pruner: tuple[str, dict]
    storage: str  # "sqlite", "journal", a journal file's path or a database URL
    folder: Path
    fixed: dict
    space: dict[str, Param]

    def record(self) -> dict:
        """What a study keeps of its sweep, to refuse a restart with another search."""
        return json.loads(json.dumps({"metric": self.metric, "direction": self.direction, "seeds": self.seeds,
                                      "folds": self.folds,
                                      "fixed": self.fixed, "space": {k: vars(p) for k, p in self.space.items()}}))

    def run_name(self, root: int, seed: int | None, fold: int | None = None) -> str:
        return (f"trial_{root:04d}" + (f"/seed_{seed}" if self.seeds is not None else "")
                + (f"/fold_{fold}" if fold is not None else ""))

    def runs(self) -> list[tuple[int | None, int | None]]:
        """The (seed, fold) of each run of a trial: every seed on every fold."""
        return [(seed, fold) for seed in self.seeds or [None] for fold in (range(self.folds) if self.folds else [None])]


def named(value, known: dict, what: str, where: str) -> tuple[str, dict]:
    """(name, options) of `tpe` or `{name: tpe, seed: 0, ...}`."""
    options = dict(value) if isinstance(value, dict) else {"name": value}
    name = options.pop("name", None)
    if name not in known:
        raise ConfigError(f"{where}: {what} {name!r} is not one of {', '.join(known)}; write {what}: NAME, or "
                          f"{what}: {{name: NAME, ...its options}}.")
    return name, options


def read_sweep(path: str, storage: str | None = None) -> Sweep:
    """The sweep file at `path`, checked; one ConfigError for the first thing wrong with it."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--sweep {path} is not a file; give a sweep YAML, e.g. experiments/sweeps/digits_mlp.yaml.")
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML ({str(err).splitlines()[0]}).") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds no mapping; a sweep file holds {', '.join(KEYS)}.")
    if unknown := sorted(set(raw) - set(KEYS)):
        raise ConfigError(f"{path}: unknown key {unknown[0]!r}; a sweep file holds {', '.join(KEYS)}.")
    if not isinstance(raw.get("metric"), str):
        raise ConfigError(f"{path}: metric is missing; name the logged metric trials are ranked by, e.g. metric: val/loss.")
    if raw.get("direction") not in ("minimize", "maximize"):
        raise ConfigError(f"{path}: direction must be minimize or maximize (for {raw['metric']}); "
                          f"got {raw.get('direction')!r}.")
    space = raw.get("space")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: space is missing; map each config key to search to {{low: A, high: B}} "
                          "or {choices: [...]}.")
    params = {str(key): read_param(str(key), spec, path) for key, spec in space.items()}
    sampler = named(raw.get("sampler", "tpe"), SAMPLERS, "sampler", path)
    grid = 1
    if sampler[0] == "grid":
        for param in params.values():
            if param.grid() is None:
                raise ConfigError(f"{path}: the grid sampler needs choices (or a step) for space.{param.key}.")
            grid *= len(param.grid())
    trials = raw.get("trials", grid if sampler[0] == "grid" else None)
    if type(trials) is not int or trials < 1 or (sampler[0] == "grid" and trials > grid):
        most = f" (at most the grid's {grid} points)" if sampler[0] == "grid" else ""
        raise ConfigError(f"{path}: trials must be a whole number of at least 1{most}; got {trials!r}.")
    seeds = raw.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or any(type(s) is not int for s in seeds)
                              or len(set(seeds)) < len(seeds)):
        raise ConfigError(f"{path}: seeds must be a list of distinct whole numbers, e.g. seeds: [0, 1, 2]; "
                          f"got {seeds!r}.")
    folds = raw.get("folds")
    if folds is not None and (type(folds) is not int or folds < 2):
        raise ConfigError(f"{path}: folds must be a whole number of at least 2 (each trial runs on every fold, "
                          f"through data.folds and data.fold); got {folds!r}.")
    name = str(raw.get("name") or file.stem)
    if not re.fullmatch(r"[\w.-]+", name):
        raise ConfigError(f"{path}: name {name!r} must be letters, digits, '.', '_' or '-' "
                          "(it names a folder and a study).")
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: fixed must map config keys to the values every trial takes; got {fixed!r}.")
    pruner = named(raw.get("pruner", "median"), PRUNERS, "pruner", path)
    return Sweep(file, name, raw["metric"], raw["direction"], trials, tuple(seeds) if seeds else None, folds, sampler,
                 pruner, str(storage or raw.get("storage") or "sqlite"), Path(raw.get("folder") or Path("runs", name)),
                 {str(k): v for k, v in fixed.items()}, params)


# ---- Optuna ----


def optuna_module():
    try:
        import optuna
    except ImportError:
        raise ConfigError("litlab sweep needs optuna; install it with: pip install 'litlab[sweep]'.") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints a line a trial itself
    return optuna


def make_sampler(sweep: Sweep, offset: int = 0):
    optuna = optuna_module()
    name, options = sweep.sampler
    options = dict(options)
    seed = options.pop("seed", 0) + offset
    try:
        if name == "grid":
            if options:
                raise TypeError(f"unexpected options {sorted(options)}")
            return grid_sampler({key: param.grid() for key, param in sweep.space.items()}, seed)
        return getattr(optuna.samplers, SAMPLERS[name])(seed=seed, **options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{sweep.path}: sampler {name}: {err}; see optuna.samplers.{SAMPLERS[name]}.") from None


def make_pruner(sweep: Sweep):
    optuna = optuna_module()
    name, options = sweep.pruner
    try:
        return getattr(optuna.pruners, PRUNERS[name])(**options)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{sweep.path}: pruner {name}: {err}; see optuna.pruners.{PRUNERS[name]}.") from None


def grid_sampler(space: dict, seed: int):
    from optuna.samplers import GridSampler

    class Grid(GridSampler):
        """Optuna's grid sampler, less its stopping of the study when the grid is used up: the
        sweep counts its own trials (and a re-queued trial is not a new grid point)."""

        def after_trial(self, study, trial, state, values) -> None:
            pass

    return Grid(space, seed=seed)


def storage_of(sweep: Sweep):
    """The Optuna storage the sweep names."""
    optuna = optuna_module()
    spec = sweep.storage
    if spec == "journal" or spec.endswith(".journal"):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = sweep.folder / "study.journal" if spec == "journal" else Path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    url = f"sqlite:///{(sweep.folder / 'study.db').resolve()}" if spec == "sqlite" else spec
    if "://" not in url:
        raise ConfigError(f"{sweep.path}: storage {spec!r} is not sqlite, journal, a .journal file or a database URL "
                          "(postgresql+psycopg://user@host/db, mysql+pymysql://...).")
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except ModuleNotFoundError as err:
        raise ConfigError(f"storage {shown_url(url)} needs the database driver {err.name}; install it (psycopg[binary] "
                          "for postgresql+psycopg://, pymysql for mysql+pymysql://).") from None
    except Exception as err:  # sqlalchemy's OperationalError and kin: the server, the URL, the credentials
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"storage {shown_url(url)}: cannot open it ({first[:200]}); check the URL and that the "
                          "server runs and is reachable.") from None


def shown_url(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_study(sweep: Sweep, storage, sampler=None, pruner=None):
    """The sweep's study, created on first use; one that was started with another search is refused."""
    optuna = optuna_module()
    study = optuna.create_study(study_name=sweep.name, storage=storage, sampler=sampler, pruner=pruner,
                                direction=sweep.direction, load_if_exists=True)
    recorded = study.user_attrs.get("sweep")
    if recorded is None:
        study.set_user_attr("sweep", sweep.record())
    elif recorded != sweep.record():
        changed = ", ".join(k for k in recorded if recorded[k] != sweep.record().get(k))
        raise ConfigError(f"study {sweep.name} in {sweep.storage} was started with another {changed}; restore the sweep "
                          "file to continue it, or give this search a new name: (a new study).")
    return study


# ---- which trials stand ----


def standing(trials) -> dict:
    """{number a trial started with: its latest attempt}; a trial re-queued after a stop keeps its number."""
    latest = {}
    for trial in trials:
        if trial.user_attrs.get("excess"):
            continue
        root = trial.user_attrs.get("resumes", trial.number)
        if root not in latest or trial.number > latest[root].number:
            latest[root] = trial
    return latest


def finished(trial) -> bool:
    """Complete, pruned, or failed for a reason; a FAIL without one was stopped, and is resumed."""
    from optuna.trial import TrialState

    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or \
        (trial.state == TrialState.FAIL and "reason" in trial.user_attrs)


def held(path: Path) -> bool:
    """Whether another process holds the lock on `path`. (Never asked of a lock this process holds:
    closing any descriptor of a file drops this process's locks on it.)"""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class Worker:
    """Claims trials of the study one at a time, runs each, and tells the study how it ended."""

    def __init__(self, sweep: Sweep, configs: list[str], extra: list[str], index: int = 0, workers: int = 1) -> None:
        self.sweep, self.configs, self.extra = sweep, configs, extra
        self.me = f"{HOST}:{os.getpid()}"
        storage = storage_of(sweep)
        optuna = optuna_module()
        study = optuna.load_study(study_name=sweep.name, storage=storage)
        # One seed reproduces a fresh sweep of one worker; every other process draws its own.
        # (The grid sampler maps trial numbers to points through its seed: every process keeps it.)
        fresh = index == 0 and not study.get_trials(deepcopy=False) and not os.environ.get("SLURM_ARRAY_TASK_ID")
        offset = 0 if fresh or sweep.sampler[0] == "grid" else hash((HOST, os.getpid(), time.time())) % 2**30
        self.study = optuna.load_study(study_name=sweep.name, storage=storage, sampler=make_sampler(sweep, offset),
                                       pruner=make_pruner(sweep))
        self.space = {key: param.distribution() for key, param in sweep.space.items()}
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = max(1, cores // workers) if workers > 1 and "OMP_NUM_THREADS" not in os.environ else None

    def lock(self) -> int:
        fd = os.open(self.sweep.folder / "sweep.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        return fd

    def run(self) -> int:
        while not STOP:
            claimed = self.claim()
            if claimed == "wait":
                time.sleep(1.0)
                continue
            if claimed is None:
                break
            trial, root, lock = claimed
            try:
                self.run_trial(trial, root)
            finally:
                os.close(lock)
        return 128 + STOP[0] if STOP else 0

    def owner(self, trial) -> str:
        """"alive", "dying" (its worker is gone, its fit still saving) or "gone"."""
        worker = trial.user_attrs.get("worker")
        if worker is None:
            return "gone" if time.time() - trial.datetime_start.timestamp() > HEARTBEAT else "alive"
        host = worker.rpartition(":")[0]
        if host != HOST:
            return "gone" if time.time() - trial.user_attrs.get("alive", 0) > STALE else "alive"
        folder = self.sweep.folder / f"trial_{trial.user_attrs.get('resumes', trial.number):04d}"
        if held(folder / "trial.lock"):
            return "alive"
        return "dying" if any(held(lock) for lock in folder.rglob("run.lock")) else "gone"

    def claim(self):
        """(trial, its number, its lock) to run next, "wait" while a stopped trial is still saving, or None."""
        from optuna.trial import TrialState

        lock = self.lock()
        try:
            trials = self.study.get_trials(deepcopy=False)
            dying = False
            for trial in trials:
                if trial.state != TrialState.RUNNING or trial.user_attrs.get("worker") == self.me:
                    continue
                state = self.owner(trial)
                dying |= state == "dying"
                if state == "gone":
                    try:
                        self.study.tell(trial.number, state=TrialState.FAIL)  # no reason: it is queued again below
                    except Exception:  # another process told it first
                        pass
            trials = self.study.get_trials(deepcopy=False)
            latest = standing(trials)
            for root, trial in latest.items():
                if trial.state == TrialState.FAIL and not finished(trial):
                    self.study.enqueue_trial(trial.params, user_attrs={"resumes": root})
            waiting = any(t.state == TrialState.WAITING for t in self.study.get_trials(deepcopy=False))
            if not waiting and len(latest) >= self.sweep.trials:
                return "wait" if dying else None
            trial = self.study.ask(self.space)
            trial.set_user_attr("worker", self.me)
            trial.set_user_attr("alive", time.time())
            root = trial.user_attrs.get("resumes", trial.number)
            if root == trial.number and len(latest) >= self.sweep.trials:  # another machine took the last one
                trial.set_user_attr("excess", True)
                trial.set_user_attr("reason", f"the sweep already had its {self.sweep.trials} trials")
                self.study.tell(trial, state=TrialState.FAIL)
                return None
            folder = self.sweep.folder / f"trial_{root:04d}"
            folder.mkdir(parents=True, exist_ok=True)
            mine = os.open(folder / "trial.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(mine, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(mine)
                self.study.tell(trial, state=TrialState.FAIL)  # queued again once the other process lets go
                return "wait"
            os.ftruncate(mine, 0)
            os.pwrite(mine, f"{self.me} runs trial {trial.number}\n".encode(), 0)
            return trial, root, mine
        finally:
            os.close(lock)

    def fit_args(self, values: dict, seed: int | None, name: str, save_dir: Path, ckpt: str | None = None,
                 fold: int | None = None) -> list[str]:
        return fit_args(self.sweep, self.configs, self.extra, values, seed, name, save_dir, ckpt, fold)

    def run_trial(self, trial, root: int) -> None:
        from optuna.trial import TrialState

        sweep, study = self.sweep, self.study
        values = {key: param.value(trial.params[key]) for key, param in sweep.space.items()}
        shown = f"trial {root} ({describe(values)})"
        runs, results, start = [], [], time.monotonic()
        for i, (seed, fold) in enumerate(sweep.runs()):
            name = sweep.run_name(root, seed, fold)
            last = newest_fit(sweep.folder / name, None)
            first = i == 0
            fit = sweep_trial.Fit(
                args=self.fit_args(values, seed, name, sweep.folder, str(last) if last else None, fold),
                log=sweep.folder / f"trial_{root:04d}" / "trial.log", threads=self.threads,
                report=(lambda epoch, value: self.report(trial, epoch, value)) if first else None,
                history=(lambda points: [trial.report(value, epoch) for epoch, value in points]) if first else None,
                heartbeat=lambda: trial.set_user_attr("alive", time.time()), beat=HEARTBEAT)
            outcome = sweep_trial.run(fit)
            if outcome.code in sweep_trial.STOPPED or (outcome.code < 0 and STOP):  # saved, or stopped with the sweep
                trial.set_user_attr("stopped", outcome.code)
                study.tell(trial, state=TrialState.FAIL)  # no reason: the next claim queues it again
                say(f"{shown}: stopped; it resumes from its last.ckpt")
                return
            if outcome.code != 0:  # its error, its bug, or a kill that was not the sweep's (out of memory)
                return self.fail(trial, shown, outcome.reason)
            run = newest_run(sweep.folder / name)
            if run is None:
                return self.fail(trial, shown, f"its fit ended without training a run (see {fit.log})")
            runs.append(str(run))
            trial.set_user_attr("runs", runs)
            results.append(run_result(run, sweep.metric, sweep.direction))
            if outcome.pruned_at is not None:
                trial.set_user_attr("pruned_at", outcome.pruned_at)
                study.tell(trial, state=TrialState.PRUNED)
                return say(f"{shown}: pruned after epoch {outcome.pruned_at}, in {time.monotonic() - start:.1f} s")
            if results[-1][0] is None:
                return self.fail(trial, shown, f"{sweep.metric} was never logged, or never finite, in {run}")
        summary = aggregate(results, sweep.metric)
        trial.set_user_attr("summary", summary)
        study.tell(trial, summary[sweep.metric]["mean"])
        tests = ", ".join(f"{k} {v['mean']:.4f}" for k, v in summary.items() if k.startswith("test/"))
        say(f"{shown}: {sweep.metric} {summary[sweep.metric]['mean']:.4f}" + (f" ({tests})" if tests else "")
            + f", in {time.monotonic() - start:.1f} s")

    def report(self, trial, epoch: int, value: float) -> bool:
        trial.report(value, epoch)
        return trial.should_prune()

    def fail(self, trial, shown: str, reason: str) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("reason", reason)
        self.study.tell(trial, state=TrialState.FAIL)
        say(f"{shown}: failed: {reason}")


def fit_args(sweep: Sweep, configs: list[str], extra: list[str], values: dict, seed: int | None, name: str,
             save_dir: Path, ckpt: str | None = None, fold: int | None = None) -> list[str]:
    """The `litlab fit` arguments of one run of a trial: parents before children (a class before its arguments)."""
    settings = sorted([*sweep.fixed.items(), *values.items()], key=lambda item: item[0].count("."))
    report = {"class_path": "experiments.sweep_trial.SweepReport", "init_args": {"metric": sweep.metric}}
    args = ["fit", *[arg for config in configs for arg in ("--config", config)], *extra,
            *[f"--{key}={flag_value(value)}" for key, value in settings],
            *([f"--seed_everything={seed}"] if seed is not None else []),
            *([f"--data.init_args.folds={sweep.folds}", f"--data.init_args.fold={fold}"] if fold is not None else []),
            *QUIET,
            f"--trainer.logger.init_args.save_dir={save_dir}", f"--trainer.logger.init_args.name={name}",
            f"--trainer.logger.init_args.group={sweep.name}", f"--trainer.callbacks+={json.dumps(report)}"]
    return args + (["--ckpt_path", ckpt] if ckpt else [])


def flag_value(value) -> str:
    """A value as a flag gives it: YAML, in one line (1.0e-05, not 1e-05, which YAML reads as a string)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def describe(values: dict) -> str:
    short = {key: key.rsplit(".", 1)[-1] for key in values}
    if len(set(short.values())) < len(short):
        short = {key: key for key in values}
    return ", ".join(f"{short[k]}={v:.4g}" if isinstance(v, float) else f"{short[k]}={v}" for k, v in values.items())


def say(line: str) -> None:
    print(f"litlab sweep: {line}", flush=True)


def newest_run(root: Path) -> Path | None:
    versions = [p for p in root.glob("version_*") if p.name[8:].isdigit() and (p / "metrics.csv").is_file()]
    return max(versions, key=lambda p: int(p.name[8:])) if versions else None


def run_result(run: Path, metric: str, direction: str) -> tuple[float | None, dict[str, float]]:
    """(the best `metric` the run reached, its test metrics), from its metrics.csv."""
    import math

    rows = read_metrics(run / "metrics.csv") if (run / "metrics.csv").is_file() else []
    values = [row[metric] for row in rows if metric in row and math.isfinite(row[metric])]
    best = (min if direction == "minimize" else max)(values) if values else None
    tests = {key: value for row in rows for key, value in row.items() if key.startswith("test/")}
    return best, tests


def aggregate(results: list[tuple[float, dict]], metric: str) -> dict[str, dict]:
    """Mean, standard deviation and 95% interval over the runs (seeds and folds), of the metric and each test metric."""
    columns = {metric: [value for value, _ in results]}
    for _, tests in results:
        for key, value in tests.items():
            columns.setdefault(key, []).append(value)
    out = {}
    for key, values in columns.items():
        mean, sd, half = spread(values)
        out[key] = {"mean": mean, "sd": sd, "ci95": [mean - half, mean + half], "values": values}
    return out


# ---- before the first trial ----


def check_trials(sweep: Sweep, configs: list[str], extra: list[str], every_value: bool = True) -> None:
    """Try each value of the space (the others at their first) in a one-step fit, and give one line for
    the first one refused; then import here what the fit imported, so that each trial starts warm.
    Without `every_value` (a study that was checked when it started), only the first values are tried."""
    first = {key: param.checked()[0] for key, param in sweep.space.items()}
    cases = [(None, first)] + [(key, {**first, key: value}) for key, param in sweep.space.items()
                               for value in param.checked()[1:]] * every_value
    seed, fold = sweep.runs()[0]
    with tempfile.TemporaryDirectory(prefix="litlab-sweep-check-") as folder:
        modules = Path(folder, "modules.txt")
        for i, (key, values) in enumerate(cases):
            args = [*fit_args(sweep, configs, extra, values, seed, "check", Path(folder), fold=fold), *CHECK]
            fit = sweep_trial.Fit(args, Path(folder, f"check_{i}.log"), env={"WANDB_MODE": "disabled"},
                                  modules=modules if i == 0 else None)
            outcome = sweep_trial.run(fit)
            if outcome.code != 0:
                where = f"space.{key}={flag_value(values[key])}" if key else f"the first values ({describe(first)})"
                raise ConfigError(f"{sweep.path}: {where} cannot start a trial: {outcome.reason or 'it stopped'}")
        sweep_trial.warm_up(modules)


def study_exists(sweep: Sweep) -> bool:
    """Whether the sweep's study was started before (its default file is not created to find out)."""
    if sweep.storage in ("sqlite", "journal"):
        file = sweep.folder / ("study.db" if sweep.storage == "sqlite" else "study.journal")
        if not file.is_file():
            return False
    elif sweep.storage.endswith(".journal") and not Path(sweep.storage).is_file():
        return False
    return sweep.name in optuna_module().get_all_study_names(storage_of(sweep))


# ---- the command ----


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litlab sweep",
        description="A hyperparameter search over an experiment with Optuna. Every other --key=value is given "
                    "to each trial's litlab fit. The same command continues a stopped sweep, and run on other "
                    "machines that share the storage and the folder, it takes trials from the same study.")
    parser.add_argument("--config", action="append", required=True, help="the experiment's YAML (repeatable, as for fit)")
    parser.add_argument("--sweep", required=True, help="the sweep's YAML (experiments/sweeps/)")
    parser.add_argument("--workers", type=int, default=1, help="trials run at once on this machine (default 1)")
    parser.add_argument("--storage", help="the study's storage, instead of the sweep file's: sqlite, journal, a "
                                          ".journal file or a database URL")
    parser.add_argument("--wandb", metavar="FILE", help="write the sweep as a W&B sweep configuration to FILE, "
                                                        "for wandb sweep FILE and wandb agent, and run nothing")
    return parser


def main(arguments: list[str]) -> None:
    args, extra = parser().parse_known_args(arguments)
    if stray := [arg for arg in extra if not arg.startswith("--")]:
        raise ConfigError(f"litlab sweep: {stray[0]!r} is not an option; options other than --config, --sweep, "
                          "--workers and --storage are --key=value flags for each trial's litlab fit.")
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: give at least 1 trial at a time.")
    sweep = read_sweep(args.sweep, args.storage)
    for config in args.config:
        if not Path(config).is_file():
            raise ConfigError(f"--config {config} is not a file; give the experiment's YAML, "
                              "e.g. experiments/digits/mlp.yaml.")
    make_sampler(sweep)
    make_pruner(sweep)  # their options are refused now, not in a worker
    for key, param in sweep.space.items():
        try:
            param.distribution()
        except ValueError as err:
            raise ConfigError(f"{sweep.path}: space.{key}: {err}.") from None
    if args.wandb:
        return write_wandb(sweep, args.config, extra, Path(args.wandb))
    check_trials(sweep, args.config, extra, every_value=not study_exists(sweep))
    sweep.folder.mkdir(parents=True, exist_ok=True)
    # What `litlab report FOLDER` needs to find the study again: the sweep file, and where the study lives.
    (sweep.folder / "sweep.yaml").write_text(sweep.path.read_text())
    storage = sweep.storage if shown_url(sweep.storage) == sweep.storage else None  # never a password in a file
    (sweep.folder / "sweep.json").write_text(json.dumps({"storage": storage, "configs": args.config, "extra": extra},
                                                        indent=1))
    study = open_study(sweep, storage_of(sweep))
    done = sum(finished(t) for t in standing(study.get_trials(deepcopy=False)).values())
    say(f"{sweep.name}: {sweep.trials} trials of {', '.join(args.config)}, {done} finished before; study in "
        f"{shown_url(sweep.storage) if '://' in sweep.storage else storage_name(sweep)}, runs in {sweep.folder}")
    STOP.clear()
    # SIGUSR1 (a scheduler's warning before the time limit) stops the sweep as SIGTERM does.
    before = {signum: signal.signal(signum, on_stop) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        code = work(sweep, args.config, extra, args.workers)
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)
    latest = standing(study.get_trials(deepcopy=False))
    write_results(sweep, latest)
    if code:
        done = sum(finished(t) for t in latest.values())
        reason = f"stopped by {signal.Signals(STOP[0]).name}" if STOP else "a worker failed (see above)"
        print(f"litlab sweep: {reason}; {done} of {sweep.trials} trials finished, the running ones saved to resume "
              f"from their last.ckpt. Continue it with: {shlex.join(['litlab', 'sweep', *arguments])}",
              file=sys.stderr, flush=True)
        sys.exit(code)


def storage_name(sweep: Sweep) -> str:
    if sweep.storage == "sqlite":
        return str(sweep.folder / "study.db")
    return str(sweep.folder / "study.journal") if sweep.storage == "journal" else sweep.storage


def on_stop(signum: int, frame) -> None:
    if not STOP:
        STOP.append(signal.SIGTERM if signum == signal.SIGUSR1 else signum)
    for pid in WORKERS:  # each saves its running trial and stops
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    sweep_trial.stop_running()


def work(sweep: Sweep, configs: list[str], extra: list[str], workers: int) -> int:
    """Run the trials here (one worker) or in `workers` forked processes; the exit status."""
    if workers == 1:
        return Worker(sweep, configs, extra).run()
    for index in range(workers):
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            WORKERS.clear()
            code = 1
            try:
                code = Worker(sweep, configs, extra, index, workers).run()
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # this process's copy of the parent's database connections stays untouched
        WORKERS.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in WORKERS]
    WORKERS.clear()
    return 128 + STOP[0] if STOP else max(codes)


def write_results(sweep: Sweep, latest: dict) -> None:
    """trials.csv (every trial) and best.yaml (the best trial's settings, a config to give fit) in the sweep's folder."""
    from optuna.trial import TrialState

    rows = []
    for root, trial in sorted(latest.items()):
        summary = trial.user_attrs.get("summary", {})
        took = (trial.datetime_complete - trial.datetime_start).total_seconds() if trial.datetime_complete else ""
        row = {"trial": root, "state": trial.state.name.lower() if finished(trial) else "unfinished",
               sweep.metric: trial.value if trial.value is not None else "", "seconds": took,
               **{key: trial.params.get(key, "") for key in sweep.space}}
        row.update({f"{key} mean": value["mean"] for key, value in summary.items() if key.startswith("test/")})
        row.update({"reason": trial.user_attrs.get("reason", ""), "runs": " ".join(trial.user_attrs.get("runs", []))})
        rows.append(row)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with (sweep.folder / "trials.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    complete = [t for t in latest.values() if t.state == TrialState.COMPLETE]
    if not complete:
        return
    best = (min if sweep.direction == "minimize" else max)(complete, key=lambda t: t.value)
    root = best.user_attrs.get("resumes", best.number)
    values = {key: param.value(best.params[key]) for key, param in sweep.space.items()}
    summary = best.user_attrs.get("summary", {})
    stats = "; ".join(f"{key} {s['mean']:.4f} (sd {s['sd']:.4f}, 95% CI {s['ci95'][0]:.4f} to {s['ci95'][1]:.4f}, "
                      f"{len(s['values'])} runs)" if len(s["values"]) > 1 else f"{key} {s['mean']:.4f}"
                      for key, s in summary.items())
    runs = best.user_attrs.get("runs", [])
    first = sweep.runs()[0]
    which = ", ".join(f"{k} {v}" for k, v in zip(("seed", "fold"), first) if v is not None)
    header = (f"# The best trial of sweep {sweep.name} ({sweep.path}): trial {root}; {stats}.\n"
              f"# Its runs: {' '.join(runs)}\n"
              f"# This is the whole config of its first run{f' ({which})' if which else ''}, which\n"
              f"#   litlab fit --config {sweep.folder / 'best.yaml'}\n"
              "# trains again to the same metrics (another seed: --seed_everything=N"
              + ("; every sample: --data.init_args.folds=null" if sweep.folds else "") + ").\n")
    (sweep.folder / "best.yaml").write_text(header + yaml.safe_dump(best_config(sweep, Path(runs[0])), sort_keys=False))
    say(f"best: trial {root} ({describe(values)}), {sweep.metric} {best.value:.4f}; "
        f"its settings: {sweep.folder / 'best.yaml'}")


def best_config(sweep: Sweep, run: Path) -> dict:
    """A trial run's config.yaml as a config of its own: its run folder under runs/<sweep>-best, not in the
    sweep's folder, without the sweep's reporting callback, and starting afresh (no ckpt_path)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    trainer = config.get("trainer", {})
    logger = trainer.get("logger")
    if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
        logger["init_args"].update(save_dir=str(sweep.folder.parent), name=f"{sweep.name}-best")
    if isinstance(trainer.get("callbacks"), list):
        trainer["callbacks"] = [c for c in trainer["callbacks"]
                                if not (isinstance(c, dict) and c.get("class_path", "").endswith("sweep_trial.SweepReport"))]
    config.pop("ckpt_path", None)
    return config


# ---- the same sweep on W&B ----

WANDB_METHODS = {"tpe": "bayes", "random": "random", "grid": "grid"}


def wandb_parameter(param: Param) -> dict:
    """A space entry as a W&B sweep parameter. Class-path choices are given as JSON, which the flag reads back."""
    if param.choices:
        return {"values": [json.dumps(c) if isinstance(c, (dict, list)) else c for c in param.choices]}
    if param.step is not None:
        return {"values": param.grid()}
    if param.integer:  # W&B's quantized log distribution may give 57.0, which an int argument refuses
        return {"distribution": "int_uniform", "min": param.low, "max": param.high}
    return {"distribution": "log_uniform_values" if param.log else "uniform", "min": float(param.low),
            "max": float(param.high)}


def wandb_config(sweep: Sweep, configs: list[str], extra: list[str]) -> dict:
    """The sweep file as a W&B sweep configuration: the agent runs `litlab fit` with each run's values as
    --key=value flags. W&B runs one seed and one fold a run, so seeds and folds become parameters of the
    search (W&B has no mean over them); its early termination is Hyperband's, so a median pruner is left out;
    a whole-number range is drawn uniformly (W&B's log scale for integers gives floats)."""
    parameters = {key: {"value": json.dumps(v) if isinstance(v, (dict, list)) else v} for key, v in sweep.fixed.items()}
    parameters.update({key: wandb_parameter(param) for key, param in sweep.space.items()})
    if sweep.seeds:
        parameters["seed_everything"] = {"values": list(sweep.seeds)}
    if sweep.folds:
        parameters["data.init_args.folds"] = {"value": sweep.folds}
        parameters["data.init_args.fold"] = {"values": list(range(sweep.folds))}
    config = {"name": sweep.name, "method": WANDB_METHODS[sweep.sampler[0]],
              "metric": {"name": sweep.metric, "goal": sweep.direction}, "parameters": parameters,
              "command": ["${env}", "litlab", "fit", *[a for c in configs for a in ("--config", c)], *extra,
                          f"--trainer.logger.init_args.group={sweep.name}", "${args}"]}
    if sweep.pruner[0] == "hyperband":
        least = sweep.pruner[1].get("min_resource", "auto")
        config["early_terminate"] = {"type": "hyperband", "min_iter": least if type(least) is int else 1}
    if sweep.sampler[0] != "grid":
        config["run_cap"] = sweep.trials
    return config


def write_wandb(sweep: Sweep, configs: list[str], extra: list[str], path: Path) -> None:
    path.write_text(f"# W&B sweep of {sweep.path}, written by litlab sweep --wandb.\n"
                    + yaml.safe_dump(wandb_config(sweep, configs, extra), sort_keys=False))
    say(f"wrote {path}: start it with `wandb sweep {path}`, then run the `wandb agent ENTITY/PROJECT/SWEEP_ID` it prints "
        "on each machine (W&B must be online: wandb login).")
