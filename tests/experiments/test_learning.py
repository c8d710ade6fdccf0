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
