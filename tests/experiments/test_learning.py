"""Each digits experiment, run as shipped, learns to the accuracy the README promises."""

import pytest

from experiments.cli import DEFAULTS, LitlabCLI

DIGITS = DEFAULTS.parent / "digits"


def fit(*args: str) -> float:
    cli = LitlabCLI(args=["fit", *args, "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])
    return float(cli.trainer.callback_metrics["test/acc"])


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch: pytest.MonkeyPatch) -> None:
    # These tests are about learning; the W&B tests read real offline runs.
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.mark.slow
@pytest.mark.parametrize(
    "experiment, accuracy",
    [("cnn", 0.98), ("mlp", 0.95), ("rnn", 0.93), ("lstm", 0.93), ("gru", 0.93), ("transformer", 0.93)],
)
def test_digits_experiment_reaches_its_test_accuracy(experiment: str, accuracy: float) -> None:
    assert fit("--config", str(DIGITS / f"{experiment}.yaml")) >= accuracy


@pytest.mark.slow
def test_a_step_activation_mlp_learns_far_above_chance() -> None:
    # The Heaviside step has zero derivative; only the straight-through gradient lets it learn.
    accuracy = fit(
        "--config", str(DIGITS / "mlp.yaml"),
        "--model.init_args.backbone.init_args.activation=step",
        "--model.init_args.optimizer=torch.optim.SGD",
        "--model.init_args.optimizer.init_args.lr=0.05",
        "--model.init_args.optimizer.init_args.momentum=0.9",
    )
    assert accuracy >= 0.85  # chance is 0.10


@pytest.mark.slow
def test_squared_error_loss_also_learns() -> None:
    assert fit("--config", str(DIGITS / "mlp.yaml"), "--model.init_args.loss=mse") >= 0.93


@pytest.mark.slow
def test_augmentation_does_not_cost_digits_accuracy() -> None:
    # One test image is 0.28 points, so compare means over seeds, not single runs.
    seeds = (0, 1, 2)
    def correct(experiment: str) -> int:  # test images right, summed over the seeds
        return sum(round(360 * fit("--config", str(DIGITS / experiment), f"--seed_everything={s}")) for s in seeds)

    assert correct("cnn_augment.yaml") >= correct("cnn.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("on_device", [False, True], ids=["per-sample", "on-device"])
def test_a_cnn_learns_a_tiny_cifar_format_dataset(datasets_on_disk, tmp_path, on_device: bool) -> None:
    datasets_on_disk.cifar(tmp_path, n_per_batch=60)
    accuracy = fit(
        "--config", str(DIGITS / "cnn.yaml"),
        "--data=datamodules.VisionDataModule",
        "--data.dataset=cifar10",
        f"--data.root={tmp_path}",
        "--data.num_workers=0",
        "--model.backbone.channels=[16,32]",
        "--data.augment.horizontal_flip=true",
        "--data.augment.crop_padding=2",
        f"--data.augment.on_device={str(on_device).lower()}",
        "--data.batch_size=32",
        "--trainer.max_epochs=30",
    )
    assert accuracy >= 0.8  # ten classes: chance is 0.1
