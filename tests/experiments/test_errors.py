"""A user's mistake gets one clear line naming it, no traceback, and a non-zero exit."""

import pytest

from experiments.cli import DEFAULTS

CNN = str(DEFAULTS.parent / "digits" / "cnn.yaml")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "missing.yaml"], "config: File does not exist: '/"),
        (["--config", CNN, "--trainer.max_epochz=3"], "unrecognized arguments: --trainer.max_epochz"),
        (["--config", CNN, "--trainer.max_epochs=abc"], "trainer.max_epochs: Expected a <class 'int'> (got 'abc')"),
        (
            ["--config", CNN, "--model.init_args.backbone=models.backbones.Resnet"],
            "model.backbone: cannot import class 'models.backbones.Resnet'",
        ),
        (["--config", CNN, "--model.init_args.backbone.init_args.activation=swish"], "model.backbone.activation"),
        (["--config", CNN, "--data.init_args.label_fraction=0"], "label_fraction must be in (0, 1]; got 0.0."),
        (["--config", CNN, "--ckpt_path=missing.ckpt"], "Checkpoint file not found: missing.ckpt"),
    ],
    ids=["missing-file", "unknown-key", "wrong-type", "no-such-class", "bad-choice", "bad-value", "no-checkpoint"],
)
def test_user_error_is_one_clear_line(litlab, args, message):
    result = litlab("fit", *args, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("litlab: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]


def test_unknown_key_in_a_config_file_names_the_key(litlab, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  init_args:\n    lerning_rate: 0.1\n")
    result = litlab("fit", "--config", CNN, "--config", str(bad), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "litlab: error: model: Option 'lerning_rate' is not accepted" in result.stderr
