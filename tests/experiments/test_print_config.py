"""`--print_config` prints the whole resolved config; fed back in, it reproduces the run."""

import pytest
import yaml

from experiments.cli import DEFAULTS, LitlabCLI

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")


def test_printed_config_fed_back_reproduces_the_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    overrides = ["--trainer.max_epochs=1", "--seed_everything=7", "--model.init_args.backbone.init_args.width=64"]
    with pytest.raises(SystemExit) as printed:
        LitlabCLI(args=["fit", "--config", MLP, *overrides, "--print_config"])
    assert printed.value.code == 0
    printed_config = capsys.readouterr().out
    (tmp_path / "printed.yaml").write_text(printed_config)

    cli = LitlabCLI(args=["fit", "--config", str(tmp_path / "printed.yaml")])
    saved = yaml.safe_load((tmp_path / cli.trainer.log_dir / "config.yaml").read_text())
    expected = yaml.safe_load(printed_config)
    # The run's config.yaml is the experiment: the command's own checkpoint arguments are left out.
    assert saved == {key: value for key, value in expected.items() if key not in ("ckpt_path", "weights_only", "allow_changes")}
    assert expected["seed_everything"] == 7 and expected["model"]["init_args"]["backbone"]["init_args"]["width"] == 64
    assert cli.model.backbone.out_features == 64 and cli.trainer.current_epoch == 1
