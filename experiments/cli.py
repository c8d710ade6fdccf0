"""The `litlab` command: LightningCLI with litlab's defaults, W&B set-up and clear errors."""

import netrc
import os
import signal
import sys
from importlib import import_module
from pathlib import Path
from urllib.parse import urlparse

import yaml
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden

from callbacks.checkpoints import AtomicCheckpointIO
from callbacks.speed import Speed
from experiments.export import LitlabTrainer
from experiments.parsing import (
    LitlabArgumentParser, check_arguments, check_builds_only_classes, check_trains_something, config_error_in,
)
from experiments.runs import (
    WANDB_ID, LoggerSaveConfigCallback, newest_fit, release_claimed, resumed_run, run_logger, run_of, run_root,
    CONFIG, check_changes, release_locks, training_state, wandb_run,
)
import datamodules
import models
from models import contract
from models.checkpoints import check_fits, read_checkpoint, read_state_dict, resolve_checkpoint
from models.errors import ConfigError
from models.lightning_internals import leave_wandb_defaults
from models.notices import ignore_dependency_deprecations, without_lightning_info

DEFAULTS = Path(__file__).with_name("defaults.yaml")
# Each subcommand and the method arguments its parser leaves out (LightningCLI's, and export).
SUBCOMMANDS = {**LightningCLI.subcommands(), "export": {"model", "datamodule"}}
DESCRIPTION = ("litlab: train, evaluate, predict with and export the models of YAML experiments "
               "(litlab fit --config experiments/digits/cnn.yaml). A run's plots and summary, or a comparison of runs: litlab report RUN [RUN ...]; what a sweep found: litlab report SWEEP_FOLDER. "
               "A BPE tokenizer trained on an experiment's corpus: litlab tokenizer --config X.yaml --vocab_size N --output DIR; "
               "a hyperparameter search with Optuna: litlab sweep --config X.yaml --sweep experiments/sweeps/S.yaml [--workers N].")


def wandb_logged_in() -> bool:
    """True when W&B has credentials: an API key in the environment or a netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


EVALUATE = ("validate", "test", "predict", "export")


class LitlabCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, **kwargs) -> None:
        self._args = list(sys.argv[1:] if args is None else args)
        try:
            self._build_and_run(args, **kwargs)
        finally:
            release_locks()  # the run has one writer for as long as the command runs, and no longer

    def _build_and_run(self, args: list[str] | None, **kwargs) -> None:
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            trainer_class=LitlabTrainer,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=LoggerSaveConfigCallback,
            # A fresh run's directory is claimed empty; only a resumed run rewrites its own config.yaml.
            save_config_kwargs={"overwrite": True},
            parser_class=LitlabArgumentParser,
            # Tasks take their optimizer as an argument; no second, global --optimizer.
            auto_configure_optimizers=False,
            # Checkpoints are loaded by the configuration that names the model, never rebuilt from
            # what they hold, so Lightning need not save the config into the model's hyperparameters.
            load_from_checkpoint_support=False,
            parser_kwargs={"description": DESCRIPTION, **{sub: {"default_config_files": [str(DEFAULTS)]} for sub in self.subcommands()}},
            args=args,
            **kwargs,
        )

    def subcommands(self) -> dict[str, set[str]]:
        """The subcommand this command runs, alone, or every one where none is named (`litlab
        --help`, a mistyped one): each subcommand's parser holds the trainer's, the model's and the
        data's every argument, and building the four that a command does not run took a quarter
        of its parse."""
        chosen = self._args[0] if self._args else None
        return {chosen: SUBCOMMANDS[chosen]} if chosen in SUBCOMMANDS else SUBCOMMANDS

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The data knows its classes and its vocabulary; the model is told, never typed twice.
        # A link whose target the chosen model lacks is skipped; a data module outside the
        # contract gets one clear error from the contract.
        link = dict(apply_on="instantiate")
        parser.link_arguments("data", "model.init_args.num_classes", compute_fn=contract.labels_of, **link)
        # A language model learns what its data's windows are made for: the objective is set once, on the data.
        parser.link_arguments("data", "model.init_args.objective", compute_fn=contract.objective_of, **link)
        parser.link_arguments("data", "model.init_args.tokenizer", compute_fn=contract.tokenizer_of, **link)
        for tower in ("backbone", "text_backbone"):  # a language model's, a CLIP's text tower
            vocab = f"model.init_args.{tower}.init_args.vocab_size"
            parser.link_arguments("data", vocab, compute_fn=contract.vocab_of, **link)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        check_arguments(list(self._args if args is None else args))  # nothing a config names is built yet
        super().parse_arguments(parser, args)
        # Lightning would read the model's class and arguments from the checkpoint named by
        # --ckpt_path and build that instead. Here the configuration alone says what is built: a
        # checkpoint only gives weights and state (so a distilled student's checkpoint tests under
        # the student's own Classifier config). The path is held back until the classes are built.
        subcommand = self.config.get("subcommand")
        section = self.config[subcommand] if subcommand else None
        self._ckpt_path = section.get("ckpt_path") if section is not None else None
        if self._ckpt_path is not None:
            section.ckpt_path = None

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_builds_only_classes(config.as_dict())  # before anything a config names is called
        # `--trainer.enable_progress_bar=false` should just work, although defaults.yaml adds a bar.
        trainer = config.trainer
        if trainer.enable_progress_bar is False and trainer.callbacks:
            trainer.callbacks = [c for c in trainer.callbacks if not c.class_path.endswith("ProgressBar")]
        if self.subcommand == "fit":
            check_trains_something(trainer)
        if self.subcommand:
            config.ckpt_path = self._ckpt_path
            config.ckpt_path = self._resolve_ckpt_path(config)
        self._resume = self._run = None  # the fit being resumed; the run an evaluation writes into
        if self.subcommand == "fit" and config.ckpt_path:
            self._resume = resumed_run(Path(config.ckpt_path))
            if self._resume is not None:
                self._check_changes(config)
        elif self.subcommand in EVALUATE and config.ckpt_path:
            self._run = run_of(config.ckpt_path)
        folder = self._resume.folder if self._resume is not None else self._run
        logger = config.trainer.get("logger")
        if folder is not None and (folder / WANDB_ID).is_file() and hasattr(logger, "init_args"):
            # The same W&B run continues, online or offline; its step axis continues with global_step.
            logger.init_args.id = (folder / WANDB_ID).read_text().strip()
            logger.dict_kwargs = {**(logger.get("dict_kwargs") or {}), "resume": "allow"}

    def _check_changes(self, config) -> None:
        """A resumed fit trains the run it continues: see `experiments.runs.check_changes`."""
        if (self._resume.folder / CONFIG).is_file():
            now = yaml.safe_load(self.parser.dump(self.config, skip_none=False)).get(self.subcommand, {})
            check_changes(self._resume, now, bool(config.get("allow_changes")))

    def _resolve_ckpt_path(self, config) -> str | None:
        """A run folder stands for its newest last.ckpt, `last` for the newest fit run of this
        experiment and task (under SLURM, the one this job started); evaluating without a
        checkpoint would score untrained weights."""
        path = config.get("ckpt_path")
        if path is None:
            if self.subcommand in EVALUATE and not config.trainer.get("fast_dev_run"):
                raise ConfigError(
                    f"litlab {self.subcommand} needs --ckpt_path (a .ckpt file, a run folder, or last for this "
                    "experiment's newest last.ckpt); without one it would evaluate untrained weights."
                )
            return None
        if path == "last":
            root = run_root(config)
            found = newest_fit(root, config.model.get("class_path"), os.environ.get("SLURM_JOB_ID"))
            if found is None:
                raise ConfigError(
                    f"--ckpt_path last: no run under {root} holds a last.ckpt of a {config.model.get('class_path')} "
                    "fit; this experiment has not saved one there yet, so give the checkpoint's path instead."
                )
            return str(resolve_checkpoint(found))  # a broken link is named as one
        if Path(path).is_dir() or Path(path).is_symlink():
            return str(resolve_checkpoint(path))
        return path

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:
            # jsonargparse wraps what a link's compute_fn raises; a ConfigError inside is still the user's.
            cause = config_error_in(err)
            if cause is None:
                raise
            raise cause from None

    def instantiate_trainer(self, **kwargs) -> Trainer:
        # W&B is the one logger a config names (so `--trainer.logger.init_args.name=...` works);
        # a CSV logger always runs beside it, first, so the run directory is local.
        trainer_config = self.config_init[self.subcommand].get("trainer", {})
        plugins = trainer_config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]  # a checkpoint is written whole or not at all
        logger = trainer_config.get("logger")
        if isinstance(logger, WandbLogger):
            # Local runs are filed under the W&B run name when there is one: runs/<name>/version_N.
            name = self.config[self.subcommand].trainer.logger.init_args.get("name") or logger.name
            csv_logger = run_logger(logger.save_dir, name, self.subcommand, self._resume, self._run)
            # WANDB_MODE=disabled makes every W&B call a no-op: the logger is left out, and wandb
            # (half a second to import, and a run to start) is never loaded.
            wandb_off = os.environ.get("WANDB_MODE") == "disabled"
            kwargs.setdefault("logger", [csv_logger] if wandb_off else [csv_logger, logger])
            if trainer_config.get("default_root_dir") is None:
                # What Lightning files outside the loggers (SLURM's requeue checkpoint hpc_ckpt_N.ckpt)
                # goes into the run directory, not wherever the job was started.
                kwargs["default_root_dir"] = csv_logger.log_dir if rank_zero_only.rank == 0 else csv_logger.root_dir
            leave_wandb_defaults(logger)
        with without_lightning_info():  # which hardware is there, integration tips (models/notices.py)
            return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self._check_checkpoint()

    def before_validate(self) -> None:
        self._check_checkpoint()

    def before_test(self) -> None:
        self._check_checkpoint()

    def before_predict(self) -> None:
        if not is_overridden("predict_step", self.model):  # Lightning's default would call forward on a batch dict
            name = type(self.model).__name__
            raise ConfigError(f"{name} has no predict_step, so litlab predict cannot run it; score it with litlab test, "
                              f"or give {name} a predict_step that returns what each sample's row should hold.")
        self._check_checkpoint()

    def _check_checkpoint(self) -> None:
        """Size the model's lazy layers, then read --ckpt_path safely and match it to the model
        before Lightning loads it, so that a damaged file or one of another model is one clear
        line, before the run writes anything."""
        # Sized before the trainer runs: callbacks that copy or inspect the model as they set up
        # (weight averaging, the learning-rate finder) see its real shapes, and so does the check below.
        if hasattr(self.model, "size_lazy_layers"):
            self.model.size_lazy_layers(self.datamodule)
        path = self.config[self.subcommand].get("ckpt_path")
        if not path or not Path(path).is_file():
            return  # Lightning names a missing file itself
        if not self.trainer.strategy.restore_checkpoint_after_setup:
            # Lightning loads the weights before its precision plugin converts the model: float64
            # weights (precision 64-true) would pass through the float32 model and lose their low
            # bits, and a resumed run would not equal the uninterrupted one. Converted first, they load whole.
            self.trainer.precision_plugin.convert_module(self.model)
        if self.subcommand == "fit":
            # ConfigError for a damaged file, or one that holds weights alone; a run's checkpoint was read already.
            content = self._resume.state if self._resume is not None else training_state(path)
        else:
            content = read_checkpoint(path)  # ConfigError for a truncated, pickled or tensor-less file
        check_fits(self.model, read_state_dict(path, content), path)

    def after_fit(self) -> None:
        """Test the best checkpoint, then say where everything went."""
        trainer = self.trainer
        if not (trainer.interrupted or trainer.fast_dev_run):
            checkpoint = trainer.checkpoint_callback
            best = checkpoint.best_model_path if checkpoint is not None else ""
            if is_overridden("test_step", self.model) and is_overridden("test_dataloader", self.datamodule):
                trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best or None, verbose=False)
            self._report(best)
        self._finish_wandb()

    def after_validate(self) -> None:
        self._finish_wandb()

    def after_test(self) -> None:
        self._report()
        self._finish_wandb()

    def after_predict(self) -> None:
        self._finish_wandb()

    def after_export(self) -> None:
        self._finish_wandb()

    @rank_zero_only
    def _finish_wandb(self) -> None:
        # One job, one W&B run: fit and its final test share the run, which then ends here
        # (Lightning leaves it open, and a second CLI in the same process would reuse it).
        if (run := wandb_run()) is not None:
            run.finish()

    def _report(self, best: str = "") -> None:
        log_dir = self.trainer.log_dir  # a collective under DDP: every rank must ask
        if not self.trainer.is_global_zero:
            return
        metrics = self.trainer.callback_metrics
        lines = [f"{key} = {float(value):.4f}" for key, value in sorted(metrics.items()) if key.startswith("test/")]
        for callback in self.trainer.callbacks:
            if isinstance(callback, EarlyStopping) and callback.stopping_reason_message:
                lines.append(f"stopped early at epoch {callback.stopped_epoch}: {callback.stopping_reason_message}")
            if isinstance(callback, Speed) and callback.summary():
                lines.append(callback.summary())
        if best:
            lines.append(f"best checkpoint: {best}")
        if log_dir:
            lines.append(f"run directory:   {log_dir}")
        run = wandb_run()
        if run is not None and run.settings.mode == "offline":
            run_dir = Path(run.dir).parent
            lines.append(f"W&B run (offline): {run_dir}; upload it with: wandb sync {run_dir}")
        elif run is not None and run.url:
            lines.append(f"W&B run: {run.url}")
        print("\n".join(lines), flush=True)


def main(args: list[str] | None = None) -> None:
    # Offline unless the user has W&B credentials; an explicit WANDB_MODE always wins.
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
    # W&B's own banner repeats what the closing report says in one line.
    os.environ.setdefault("WANDB_SILENT", "true")
    ignore_dependency_deprecations()
    if not SLURMEnvironment.detect() and hasattr(signal, "SIGUSR1"):
        # SIGUSR1 means "stop and save" as SIGTERM does (under SLURM, Lightning's requeue handles it).
        signal.signal(signal.SIGUSR1, lambda signum, frame: os.kill(os.getpid(), signal.SIGTERM))
    arguments = list(sys.argv[1:] if args is None else args)
    try:
        if arguments[:1] == ["report"]:
            # Not a training run: a reader of run directories' files, with a parser of its own.
            from experiments import report

            folders = [arg for arg in arguments[1:] if not arg.startswith("-")]
            if len(folders) == 1 and report.is_sweep(folders[0]):  # a sweep's folder: what the sweep found
                from experiments import sweep_report

                sweep_report.main(arguments[1:])
            else:
                report.main(arguments[1:])
            return
        if arguments[:1] == ["tokenizer"]:
            from experiments import tokenizer

            tokenizer.main(arguments[1:])
            return
        if arguments[:1] == ["sweep"]:
            # Trials of an experiment, each an ordinary fit that this process forks: see experiments/sweep.py.
            from experiments import sweep

            sweep.main(arguments[1:])
            return
        if any(arg in ("-h", "--help") or arg.endswith(".help") for arg in arguments):
            # A help lists the tasks among --model's known subclasses, the DataModules among --data's
            # and the backbones among a backbone's: they are imported on first use otherwise.
            for module in [*sorted(set(models.TASKS.values())), "models.backbones", *sorted(set(datamodules.NAMES.values()))]:
                import_module(module)
        LitlabCLI(args=args)
    except SIGTERMException as stop:
        # Stopped between two training steps: callbacks.LatestCheckpoint saved the state and said how to resume.
        code = 128 + getattr(stop, "signum", signal.SIGTERM)  # 143 for SIGTERM, 130 for a Ctrl-C, as shells expect
        if (run := wandb_run()) is not None:
            run.finish(exit_code=code)
        sys.exit(code)
    except (ConfigError, MisconfigurationException, FileNotFoundError) as err:
        print(f"litlab: error: {err}", file=sys.stderr)
        release_claimed()  # a refused run leaves no run directory behind, only ever its own fresh one
        if (run := wandb_run()) is not None:
            run.finish(exit_code=2)
        sys.exit(2)


if __name__ == "__main__":
    main()
