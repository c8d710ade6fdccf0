"""What a run folder is: `<save_dir>/<run name>/version_N`, claimed by one fit, continued by its resumes.

A fit claims a fresh `version_N` (atomically, so two jobs started together never share one);
a resumed fit continues the folder its checkpoint lies in, with the rows of `metrics.csv`
logged before that checkpoint and the same W&B run (its id is kept in `wandb_id`). Validate,
test, predict and export of a checkpoint inside a run write into that run, in a folder named
after the command (`version_N/test/`). `--ckpt_path last` is the newest fit run of the same
task by version; under SLURM, the run this job started (its id is kept in `slurm_job_id`), so a
requeued job resumes its own run. A command refused before it trains leaves no folder behind.
A fit holds its run's lock (`run.lock`, a POSIX record lock the system drops when the process
ends, however it ends) for as long as it runs, so a second fit of the same run is refused.
Each command's resolved configuration is its folder's `config.yaml`, less the command's own
checkpoint arguments, so a run's config serves every later command.
"""

import csv
import fcntl
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from models.checkpoints import read_checkpoint
from models.errors import ConfigError

WANDB_ID = "wandb_id"  # the W&B run id, kept in the run directory so that a resume continues the same run
SLURM_JOB = "slurm_job_id"  # the SLURM job that started the run, so its requeued self resumes it
METRICS = "metrics.csv"
CONFIG = "config.yaml"
LAST = Path("checkpoints", "last.ckpt")
LOCK = "run.lock"  # held by the process that trains in the run; it names that process
PREAMBLE = {CONFIG, WANDB_ID, SLURM_JOB, LOCK}  # what a run holds before it has trained at all
COMMAND_ONLY = ("ckpt_path", "weights_only", "allow_changes")  # a command's own arguments, not in config.yaml
CHANGES = "changes.yaml"  # what a resume with --allow_changes changed, and at which step
# What a resume may change without changing the training: where and how it is logged and shown,
# and how many processes load the data.
UNSHAPING = ("trainer.logger", "trainer.callbacks", "trainer.enable_progress_bar", "trainer.enable_model_summary",
             "trainer.log_every_n_steps", "trainer.default_root_dir", "data.init_args.num_workers", *COMMAND_ONLY)
# What the length of the run, and so a schedule planned for it, depends on.
LENGTH = ("trainer.max_epochs", "trainer.max_steps", "trainer.accumulate_grad_batches", "trainer.devices",
          "trainer.num_nodes", "data.init_args.batch_size", "data.init_args.batch_scope", "trainer.limit_train_batches")


def wandb_run():
    """The W&B run this process has open, or None. wandb is imported when a W&B logger starts
    its run, never at start-up: `--help` and a mistyped flag do not wait for it."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def run_of(checkpoint: str | os.PathLike) -> Path | None:
    """The run folder (`<root>/version_N`) that `checkpoint` was saved in, if any."""
    checkpoint = Path(checkpoint)
    folder = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints" or not re.fullmatch(r"version_\d+", folder.name):
        return None
    return folder


def task_of(run: Path) -> str | None:
    """The class path of the model a run trained, from its config.yaml."""
    try:
        config = yaml.load((run / CONFIG).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return None
    model = config.get("model") if isinstance(config, dict) else None
    return model.get("class_path") if isinstance(model, dict) else None


def newest_fit(root: Path, task: str | None, job: str | None = None) -> Path | None:
    """last.ckpt of the newest run under `root`, by version, that a fit of `task` saved; under
    SLURM, that of the run `job` started where there is one. Never a run of another task."""
    versions = [p for p in root.glob("version_*") if re.fullmatch(r"version_\d+", p.name)]
    runs = [p for p in sorted(versions, key=lambda p: int(p.name[8:]), reverse=True)
            if ((p / LAST).is_file() or (p / LAST).is_symlink()) and (task is None or task_of(p) in (None, task))]
    if job:
        mine = [p for p in runs if (p / SLURM_JOB).is_file() and (p / SLURM_JOB).read_text().strip() == job]
        runs = mine or runs
    return runs[0] / LAST if runs else None


@dataclass(frozen=True)
class Resume:
    """Where a checkpoint inside a litlab run (`<root>/version_N/checkpoints/`) was saved, and
    what it holds (read once: the checks before the fit use it)."""

    folder: Path  # the run directory
    step: int  # global step
    state: dict = field(repr=False, compare=False)  # the checkpoint's content, as `training_state` read it

    def kept(self, row: dict[str, str]) -> bool:
        """Whether a metrics.csv row was logged before this checkpoint was saved, so that the
        resumed run will not log it again. Rows logged by the steps after a checkpoint carry its
        step or later (an epoch's closing metrics carry its last step, one before the checkpoint
        that saves its end). The test that closed the run is redone when the resumed fit ends."""
        if not row.get("step") or any(value for key, value in row.items() if key and key.startswith("test/")):
            return False
        return int(row["step"]) < self.step


def training_state(checkpoint: str | os.PathLike) -> dict:
    """What a fit saved in `checkpoint`, read safely; one line for a damaged file or one that
    holds weights alone, which a fit cannot resume."""
    saved = read_checkpoint(checkpoint)
    if not isinstance(saved, dict) or not {"global_step", "epoch", "state_dict"} <= saved.keys():
        raise ConfigError(
            f"{checkpoint} holds no training state (a fit's global_step, epoch and state_dict), so fit cannot resume "
            "it; give a .ckpt a litlab fit saved, or start from these weights with models.FineTune's checkpoint."
        )
    return saved


def resumed_run(checkpoint: Path) -> Resume | None:
    """Where `checkpoint` was saved, if it belongs to a litlab run (`<root>/version_N/checkpoints/`)."""
    folder = checkpoint.parent.parent
    if checkpoint.parent.name != "checkpoints" or not folder.name.startswith("version_") or not checkpoint.is_file():
        return None
    saved = training_state(checkpoint)
    return Resume(folder, int(saved["global_step"]), saved)


# Run directories claimed by this process, removed again if the run is refused before it trains.
CLAIMED: list[Path] = []


def claim_version(root: Path) -> int:
    """The next free version_N under `root`, created atomically: a directory made by os.mkdir
    belongs to exactly one process, however many start at the same moment."""
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"version_{version}").mkdir()
        except FileExistsError:
            version += 1
            continue
        CLAIMED.append(root / f"version_{version}")
        return version


HELD: list[int] = []  # the run locks this process holds, open until it ends


def lock_run(folder: Path) -> None:
    """Take `folder`'s lock for this process, or refuse in one line naming the process that holds it.
    A lock left by a process that was killed is free: the system drops it with the process."""
    fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"{folder} is in use: {holder} trains in it; a run has one writer at a time, so wait for that one "
            "to end (or stop it) and then resume, or start a new run."
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    HELD.append(fd)


def release_locks() -> None:
    """Drop the run locks this process holds (its command is over)."""
    while HELD:
        os.close(HELD.pop())


def claim_folder(folder: Path) -> None:
    """`folder` (a command's folder inside a run), made if new and then removed again on a refusal."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        CLAIMED.append(folder)


def record_job(folder: Path) -> None:
    """Keep the SLURM job id in a fit's run folder."""
    job = os.environ.get("SLURM_JOB_ID")
    if job:
        (folder / SLURM_JOB).write_text(job)


def release_claimed() -> None:
    """Remove the run directories this process claimed while they hold only what a run writes as it starts."""
    for folder in CLAIMED:
        if folder.is_dir() and all(p.name in PREAMBLE for p in folder.iterdir()):
            shutil.rmtree(folder)
    CLAIMED.clear()


class RunWandbLogger(WandbLogger):
    """Lightning's WandbLogger, the logger `experiments/defaults.yaml` names, with its arguments
    and W&B's most used run settings spelled out. The parent's signature types its `experiment`
    argument with names from wandb, which jsonargparse resolves by importing wandb (a third of a
    second) as it parses any config, a `--help` or a mistyped flag included; here wandb is
    imported when the run starts. A live run cannot come from a config, so `experiment` is not
    an argument; any other `wandb.init` setting passes through `dict_kwargs` as before.

    Args:
        name: The run's name on W&B; litlab also files the local run under it (runs/<name>/version_N).
        save_dir: Where the run's files go (runs/ in litlab's defaults).
        version: The W&B run id to use (same as ``id``).
        offline: Log offline, to upload later with ``wandb sync``.
        dir: Same as ``save_dir``.
        id: The W&B run id to use; a resumed litlab run sets it to the run's own.
        anonymous: Log anonymously (a W&B setting that W&B itself deprecates).
        project: The W&B project.
        log_model: Upload checkpoints to W&B as artifacts: ``True`` at the end, ``"all"`` as they are saved.
        prefix: Prepended to every metric's name.
        checkpoint_name: The name of the checkpoint artifacts.
        add_file_policy: Whether uploaded checkpoint files are ``"mutable"`` or ``"immutable"``.
        tags: Tags to find the run by on W&B.
        group: A group to gather runs under (seeds or folds of one experiment, say).
        notes: A longer description of the run.
        entity: The W&B user or team the run belongs to.
        job_type: The kind of run (training, evaluation, ...), to filter runs on W&B.
    """

    def __init__(self, name: str | None = None, save_dir: str | Path = ".", version: str | None = None,
                 offline: bool = False, dir: str | Path | None = None, id: str | None = None,
                 anonymous: bool | None = None, project: str | None = None, log_model: Literal["all"] | bool = False,
                 prefix: str = "", checkpoint_name: str | None = None,
                 add_file_policy: Literal["mutable", "immutable"] = "mutable", tags: list[str] | None = None,
                 group: str | None = None, notes: str | None = None, entity: str | None = None,
                 job_type: str | None = None, **kwargs: Any) -> None:
        run = dict(tags=tags, group=group, notes=notes, entity=entity, job_type=job_type)
        settings = {**{key: value for key, value in run.items() if value is not None}, **kwargs}
        super().__init__(name=name, save_dir=save_dir, version=version, offline=offline, dir=dir, id=id,
                         anonymous=anonymous, project=project, log_model=log_model, prefix=prefix,
                         checkpoint_name=checkpoint_name, add_file_policy=add_file_policy, **settings)


class RunCSVLogger(CSVLogger):
    """`metrics.csv` of a run folder, continued on resume: the rows logged before the checkpoint
    are kept, later ones (which the resumed run logs again) and the closing test are dropped.
    Rows are written as Lightning's CSV logger writes them (sorted columns, one row a logging
    step, flushed every `flush_every` steps); the whole file is rewritten, atomically,
    only when a new column appears. The run's configuration is its config.yaml, so no hparams.yaml."""

    def __init__(
        self, save_dir: str, name: str, version: int | None, resume: Resume | None = None, flush_every: int = 100
    ) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version)
        self.flush_every = flush_every
        self._rows: list[dict] = []  # logged, not yet written
        self._columns: list[str] = []  # the file's header
        self._started = False  # whether this logger has written metrics.csv (a fresh one replaces an older file)
        if resume is not None and rank_zero_only.rank == 0:
            self._continue(Path(self.log_dir, METRICS), resume)

    def _continue(self, path: Path, resume: Resume) -> None:
        if not path.is_file():
            return
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            self._columns = list(reader.fieldnames or [])
            kept = [row for row in reader if resume.kept(row)]
        self._write(path, kept)
        self._started = True

    def _write(self, path: Path, rows: list[dict]) -> None:
        """The whole file, replaced atomically: a kill leaves the old file or the new one."""
        aside = path.with_name(METRICS + ".tmp")
        with aside.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(aside, path)

    @property
    def experiment(self) -> "RunCSVLogger":
        """This logger itself: Lightning's CSV writer, which deletes an existing metrics.csv as it starts, is never made."""
        return self

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        """Nothing: config.yaml in the run directory holds the whole configuration."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {key: value.item() if isinstance(value, torch.Tensor) else value for key, value in metrics.items()}
        row["step"] = len(self._rows) if step is None else step
        self._rows.append(row)
        if (row["step"] + 1) % self.flush_every == 0:
            self.save()

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        path = Path(self.log_dir, METRICS)
        path.parent.mkdir(parents=True, exist_ok=True)
        new = set().union(*rows) - set(self._columns)
        if new or not path.is_file() or not self._started:
            old = []
            if path.is_file() and self._started:
                with path.open(newline="") as f:
                    old = list(csv.DictReader(f))
            self._columns = sorted({*self._columns, *new})
            self._write(path, old + rows)
            self._started = True
            return
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self._columns).writerows(rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


def flat(config: object, prefix: str = "") -> dict[str, object]:
    """{dotted key: value} of a nested config; lists are values."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, object] = {}
    for key, value in config.items():
        out.update(flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict, now: dict) -> dict[str, tuple[object, object]]:
    """{key: (the run's value, this command's)} for every setting that shapes the training and differs."""
    before, after = flat(saved), flat(now)
    keys = [key for key in sorted(before.keys() | after.keys()) if not key.startswith(UNSHAPING)]
    return {key: (before.get(key), after.get(key)) for key in keys if before.get(key) != after.get(key)}


def record_changes(folder: Path, step: int, changes: dict[str, tuple[object, object]]) -> None:
    """Append what a resume changed, and at which step, to the run's changes.yaml."""
    entry = {"step": step, "changed": {key: {"from": old, "to": new} for key, (old, new) in changes.items()}}
    with (folder / CHANGES).open("a") as f:
        yaml.safe_dump([entry], f, sort_keys=False)


def check_changes(resume: Resume, now: dict, allow: bool) -> None:
    """Refuse a resume whose config (`now`) differs from the run's config.yaml in what shapes the
    training, naming each change; with `allow`, record the changes and say what they leave as it was."""
    folder = resume.folder
    saved = yaml.safe_load((folder / CONFIG).read_text()) or {}
    changes = config_changes(saved, now)
    if not changes:
        return
    shown = "; ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in list(changes.items())[:6])
    shown += f"; and {len(changes) - 6} more" if len(changes) > 6 else ""
    if not allow:
        raise ConfigError(
            f"{folder} was trained with another config ({shown}); resume it with its own config "
            f"(--config {folder / CONFIG}), or pass --allow_changes=true to continue with these changes."
        )
    if rank_zero_only.rank == 0:
        record_changes(folder, resume.step, changes)
    length = [key for key in changes if key.startswith(LENGTH)]
    scheduled = ((now.get("model") or {}).get("init_args") or {}).get("schedule", "constant") != "constant"
    schedule = (f" The learning-rate schedule is not re-planned for the new length ({', '.join(length)}): it keeps "
                "the steps it was planned with." if length and scheduled else "")
    rank_zero_info(f"Resuming {folder} at step {resume.step} with changes ({shown}), recorded in {folder / CHANGES}."
                   f"{schedule}")


def run_logger(save_dir: str | None, name: str, subcommand: str, resume: Resume | None, run: Path | None
               ) -> "RunCSVLogger":
    """The CSV logger whose folder is this command's place: a resumed fit continues its own run
    folder; a command on a checkpoint of a run writes into that run (`version_N/<subcommand>/`);
    anything else claims a fresh `version_N`. Rank zero claims at once, so two runs started
    together never share one; the other ranks follow it (Lightning broadcasts the log folder)."""
    save_dir = save_dir or "."
    if resume is not None and resume.folder.parent == Path(save_dir, name):
        if rank_zero_only.rank == 0:
            lock_run(resume.folder)  # before metrics.csv is cut back to the checkpoint
        return RunCSVLogger(save_dir, name, int(resume.folder.name.split("_")[1]), resume=resume)
    if run is not None:
        logger = RunCSVLogger(str(run.parent.parent), run.parent.name, f"{run.name}/{subcommand}")
        if rank_zero_only.rank == 0:
            claim_folder(Path(logger.log_dir))
        return logger
    version = claim_version(Path(save_dir, name)) if rank_zero_only.rank == 0 else None
    logger = RunCSVLogger(save_dir, name, version)
    if version is not None and subcommand == "fit":
        lock_run(Path(logger.log_dir))
        record_job(Path(logger.log_dir))
    return logger


def run_root(config) -> Path:
    """Where this experiment's runs are filed: <logger save_dir>/<run name, else project>."""
    logger = config.trainer.get("logger")
    init = logger.get("init_args", {}) if hasattr(logger, "get") else {}
    return Path(init.get("save_dir") or ".", init.get("name") or init.get("project") or "lightning_logs")


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves config.yaml in the run directory, and logs the whole resolved config to every logger."""

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._log_dir = trainer.log_dir  # a collective under DDP: every rank asks here, not in save_config
        # What the command was run on (its checkpoint) is not the experiment: without it, a run's
        # config.yaml serves every subcommand (`litlab export --config .../config.yaml --ckpt_path ...`).
        self.config = self.config.clone()
        for key in COMMAND_ONLY:
            self.config.pop(key, None)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        saved = Path(self._log_dir or ".", self.config_filename)
        # The file the parent just wrote holds the same dump; reading it back costs far less than a second dump.
        if self.save_to_log_dir and saved.is_file():
            text = saved.read_text()
        else:
            text = self.parser.dump(self.config, skip_none=False)
        config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        # The CSV logger's run directory already holds config.yaml; its hparams.yaml would be a slow second copy.
        for logger in trainer.loggers:
            if not isinstance(logger, CSVLogger):
                logger.log_hyperparams({"config": config})
            if isinstance(logger, WandbLogger) and self._log_dir:
                Path(self._log_dir, WANDB_ID).write_text(logger.version)
