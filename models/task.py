"""Task: what every way of learning shares, written once.

A task (Classifier, SimCLR, FineTune, Distill, LanguageModel, CLIP) is a LightningModule that takes its networks as arguments. This base gives
each of them:

- sizing of lazy layers from the data contract's `example_input`, in `setup`, and a warning there
  when a part's pretrained weights expect inputs normalised otherwise than the data does; one
  sample of it is the model summary's input, so the summary gives each layer's sizes and FLOPs;
- the optimizer / schedule / warmup arguments, and `configure_optimizers` through `models/optim.py`;
- per-part learning-rate scales (`self.lr_scales`), parts trained without weight decay (`self.no_decay`)
  and the parts whose matrices are outputs (`self.output_parts`, left to AdamW by the Muon optimizer);
- reusable parts: `load_part` fills a submodule from a checkpoint, strictly and safely, and
  `freeze` keeps a submodule fixed (no gradients, no optimizer state, eval mode for the whole run);
- validation and testing: a task says how a batch is scored (`evaluate(batch, stage)`) and what
  an epoch logs (`log_evaluation(stage)`); the Lightning hooks of both stages call them.
"""

import os

import lightning as L
import torch
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics import Metric

from models import contract
from models.run_state import SeedKey, batches_done, derived_seed, gather_per_rank, own_state, run_seed
from models.checkpoints import load_backbone, resolve_checkpoint
from models.errors import NonFiniteLoss
from models.lazy import has_lazy, materialize
from models.notices import without_lightning_info
from models.optim import OptimizerCallable, Schedule, check_optimizer, check_schedule, configure_optimization

METRIC_STATES = "metric_states"  # checkpoint entry: what each rank's metrics had accumulated
CLASSES = "classes"  # checkpoint entry: the class names of the data the model was trained on, in label order


class Task(L.LightningModule):
    # What `compile: true` compiles (a task's backbones), with nn.Module.compile: torch.compile of each
    # part's forward, its parameters and checkpoint keys unchanged; from the trainer's set-up on.
    compiled_parts: tuple[str, ...] = ()

    def __init__(
        self, optimizer: OptimizerCallable, schedule: Schedule = "constant", warmup_fraction: float | None = None
    ) -> None:
        super().__init__()
        check_schedule(schedule, warmup_fraction)
        check_optimizer(optimizer)
        self.optimizer = optimizer
        self.schedule = schedule
        self.warmup_fraction = warmup_fraction
        # The learning rate, where something sets one over the optimizer's own: Lightning's
        # LearningRateFinder and Tuner.lr_find look for `lr` and set it to what they found.
        self.lr: float | None = None
        self._built_lr: float | None = None  # the `lr` the optimizer was last built with
        self.lr_scales: dict[str, float] = {}
        self.no_decay: set[str] = set()
        self.output_parts: set[str] = {"head"}  # a task's head writes its outputs: no hidden matrix for Muon
        self.frozen: list[str] = []
        self.classes: list[str] | None = None  # its training data's class names, in label order (saved with it)

    # ---- parts ----

    def load_part(
        self,
        name: str,
        checkpoint: str | os.PathLike,
        prefix: str | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Fill submodule `name` from `checkpoint` (file or run folder); keys under `prefix`, found when
        None. `state`: the file's tensors, already read, when several parts come from one file.
        Says on rank zero what was loaded from where."""
        part = self.get_submodule(name)
        path = resolve_checkpoint(checkpoint)
        used = load_backbone(part, path, prefix, state)
        rank_zero_info(f"{type(part).__name__} loaded from {path} (keys under '{used}').")

    def freeze(self, name: str) -> None:
        """Submodule `name` stops learning for good: no gradients (so no optimizer state and no
        DDP gradient sync) and eval mode (dropout off, batch-norm statistics untouched).
        A part with lazy layers is frozen once they are sized, in `setup`."""
        part = self.get_submodule(name)
        part.eval()
        if not has_lazy(part):
            part.requires_grad_(False)
        if name not in self.frozen:
            self.frozen.append(name)

    def train(self, mode: bool = True) -> "Task":
        # Whoever puts the task in train mode (the trainer does, every epoch), frozen parts stay in eval mode.
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    # ---- logging ----

    def log_train(self, values: dict[str, torch.Tensor], batch_size: int) -> None:
        """Per-step training values, logged only on the steps the loggers write
        (`trainer.log_every_n_steps`, as LearningRateMonitor does) and on the last batch of an
        epoch, so the progress bar and callbacks always see a recent value: each self.log call
        costs a fraction of a millisecond, a large share of a small model's step."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        # Lightning writes the loggers when the step about to complete is a multiple of log_every_n_steps.
        if (every and (trainer.global_step + 1) % every == 0) or trainer.is_last_batch or trainer.should_stop:
            for name, value in values.items():
                self.log(name, value, prog_bar=name == "train/loss", batch_size=batch_size)

    # ---- evaluation: validation and test score the same way, into metrics of their own ----

    def evaluate(self, batch, stage: str) -> dict[str, torch.Tensor] | None:
        """Score one batch of `stage` ("val" or "test") into that stage's metrics; what it
        returns from a test batch reaches the callbacks (callbacks.TestReport reads `logits`)."""
        raise NotImplementedError(f"{type(self).__name__} must say how a batch is scored: define evaluate(batch, stage).")

    def log_evaluation(self, stage: str) -> None:
        """Log what `stage`'s metrics gathered over the epoch; a task that logs its metric
        objects from `evaluate` (Lightning then computes them once an epoch) needs nothing here."""

    def validation_step(self, batch, batch_idx: int) -> None:
        self.evaluate(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_evaluation("val")

    def test_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor] | None:
        return self.evaluate(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_evaluation("test")

    # ---- sizing ----

    def setup(self, stage: str) -> None:
        self._check_preprocessing()
        datamodule = self.trainer.datamodule
        self.size_lazy_layers(datamodule)
        self.compile_parts()
        if stage == "fit" and self.example_input_array is None and hasattr(datamodule, "example_input"):
            # The model summary (before the first epoch) runs one sample forward, without gradients,
            # to give each layer's input and output sizes and its FLOPs; without it, FLOPs read 0.
            self.example_input_array = self.summary_input(datamodule.example_input)

    @property
    def example_input_array(self) -> torch.Tensor | None:
        """The model summary's input (set in `setup`), in the dtype the model's weights are in
        by then: the precision plugins convert the model, but nothing converts this example
        (float64 weights under `precision: 64-true` would refuse a float32 one)."""
        example = getattr(self, "_summary_example", None)
        if example is None or not example.is_floating_point():
            return example
        weight = next((p for p in self.parameters() if p.is_floating_point()), None)
        return example if weight is None else example.to(weight.dtype)

    @example_input_array.setter
    def example_input_array(self, example: torch.Tensor | None) -> None:
        self._summary_example = example

    def summary_input(self, example: torch.Tensor) -> torch.Tensor | None:
        """What the model summary runs forward: one sample of the data's `example_input`, or
        None where a pass of that sample would cost more than the summary is worth (a compiled
        model would compile a second graph for a one-sample batch, for the summary alone)."""
        return None if self.hparams.get("compile") else example[:1]

    def compile_parts(self) -> None:
        """Compile `compiled_parts` where the task was built with `compile: true`: once, after the lazy
        layers are sized (a lazy layer would be traced unsized)."""
        if self.hparams.get("compile") and not getattr(self, "_parts_compiled", False):
            for name in self.compiled_parts:
                self.get_submodule(name).compile()
            self._parts_compiled = True

    def size_lazy_layers(self, datamodule) -> None:
        """Size the lazy layers from the data's `example_input` (once; later calls do nothing)."""
        if has_lazy(self):
            contract.check(datamodule)
            # Lazy layers draw their initial weights from a seed of their own (the module is still
            # on the CPU here): the same whatever ran before, so one process and DDP (whose set-up
            # re-seeds the global generator) start from the same weights; the global stream is left as it was.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derived_seed(run_seed(), SeedKey.LAZY_INIT))
                materialize(self, datamodule.example_input, self.dry_run)
            for name in self.frozen:
                self.get_submodule(name).requires_grad_(False)

    def _check_preprocessing(self) -> None:
        """Pretrained model-zoo weights say how their inputs were normalised (`preprocessing`);
        data normalised otherwise still trains, but starts the weights off their footing."""
        data = self.trainer.datamodule
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        for name, module in self.named_modules():
            expected = getattr(module, "preprocessing", None)
            if not expected or mean is None or std is None:
                continue
            close = lambda a, b: len(a) == len(b) and all(abs(x - y) < 1e-3 for x, y in zip(a, b))  # noqa: E731
            if not (close(tuple(mean), expected["mean"]) and close(tuple(std), expected["std"])):
                rank_zero_warn(
                    f"{name}'s pretrained weights expect inputs normalised with mean {expected['mean']} and std "
                    f"{expected['std']}, but the data normalises with mean {tuple(round(m, 4) for m in mean)} and std "
                    f"{tuple(round(s, 4) for s in std)}; set data.mean and data.std to the weights' where the data takes them."
                )

    def dry_run(self, example: torch.Tensor) -> None:
        """The pass that sizes lazy layers; a task whose parts read different inputs overrides it."""
        self(example)

    # ---- a diverging run stops before it writes anything ----

    def on_before_backward(self, loss: torch.Tensor) -> None:
        # Before backward and the optimizer step, so the weights stay those of the last finite
        # step and no checkpoint with non-finite weights can be written. One scalar sync a step.
        if not torch.isfinite(loss):
            raise NonFiniteLoss(
                f"The training loss became {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
                "training stopped and the checkpoints written before it are kept. Lower the learning rate, add "
                "warmup or gradient clipping (--trainer.gradient_clip_val), or train in 32-bit precision if this "
                "ran in 16-bit."
            )

    # ---- a run resumed mid-epoch reports the same epoch metrics ----

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.classes:
            checkpoint[CLASSES] = self.classes  # predict, test and export name the classes by it
        # torchmetrics keeps what a metric has accumulated out of the state dict; a run resumed in
        # the middle of an epoch needs it to report that epoch's metrics. One entry per rank.
        if batches_done(self.trainer) is None:
            return  # the epoch is complete: what the metrics hold is logged, and a resumed run starts afresh
        mine = {
            name: {"state": dict(metric.metric_state), "updates": metric.update_count}
            for name, metric in self.named_modules()
            if isinstance(metric, Metric) and metric.update_count
        }
        checkpoint[METRIC_STATES] = gather_per_rank(self.trainer, mine)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get(CLASSES)
        if isinstance(saved, list) and all(isinstance(name, str) for name in saved):
            self.classes = saved
        if METRIC_STATES not in checkpoint:
            return
        metrics = dict(self.named_modules())
        for name, saved in own_state(self.trainer, checkpoint[METRIC_STATES]).items():
            metric = metrics[name]
            move = lambda t: t.to(metric.device)  # noqa: E731  (the model may already be on its device)
            state = {key: [move(t) for t in value] if isinstance(value, list) else move(value)
                     for key, value in saved["state"].items()}
            # Merged into the freshly reset metric, the saved states are the metric's states again
            # (sum, cat, min and max all leave a reset state's contribution out).
            metric.reset()
            metric.merge_state(state)

    # ---- optimisation ----

    def on_fit_start(self) -> None:
        names = getattr(self.trainer.datamodule, "classes", None)
        if names is not None:
            self.classes = [str(name) for name in names]  # saved with every checkpoint of the run
        # A callback that chose the learning rate as the fit started (LearningRateFinder sets `lr`)
        # came after the optimizer was built; it is built again, schedule and group scales included.
        # A resumed fit's optimizer state is restored after this hook, so nothing is lost.
        if self.lr != self._built_lr:
            self.trainer.strategy.setup_optimizers(self.trainer)

    def configure_optimizers(self):
        self._built_lr = self.lr
        with without_lightning_info():  # "Loading `train_dataloader` to estimate number of stepping batches."
            steps = int(self.trainer.estimated_stepping_batches)
        return configure_optimization(
            self, self.optimizer, self.schedule, steps, self.warmup_fraction, self.lr_scales, self.no_decay, self.lr,
            self.output_parts, isinstance(self.trainer.strategy, (FSDPStrategy, ModelParallelStrategy)),
        )

