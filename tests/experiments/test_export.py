"""`litlab export`: each digits model in each format, run by the format's own runtime, equals PyTorch."""

import json
from pathlib import Path

import onnxruntime
import pytest
import safetensors.torch
import torch

import experiments.export as export
from experiments.cli import DEFAULTS

DIGITS = DEFAULTS.parent / "digits"
FORMATS = ["safetensors", "onnx", "exported_program"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """An epoch of each digits recipe, as checkpoints (module-wide: training is not what is tested)."""
    from experiments.cli import LitlabCLI

    folder = tmp_path_factory.mktemp("export")
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        for name in ("cnn", "mlp", "lstm", "transformer"):
            cli = LitlabCLI(args=["fit", "--config", str(DIGITS / f"{name}.yaml"), "--trainer.max_epochs=1",
                                  f"--trainer.logger.init_args.save_dir={folder}", "--trainer.enable_progress_bar=false",
                                  "--trainer.enable_model_summary=false"])
            runs[name] = Path(cli.trainer.checkpoint_callback.best_model_path)
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["cnn", "mlp", "lstm", "transformer"])
def test_each_model_exports_in_each_format_and_matches_pytorch(cli, trained, name, fmt, tmp_path):
    output = tmp_path / f"{name}{export.SUFFIXES[fmt]}"
    run = cli("export", "--config", str(DIGITS / f"{name}.yaml"), "--ckpt_path", str(trained[name]),
              "--format", fmt, "--output", str(output))
    assert output.is_file()
    description = json.loads(output.with_name(output.name + ".json").read_text())
    assert description["classes"] == [str(c) for c in range(10)]
    assert description["inputs"]["input"]["shape"] == ["batch", *((1, 8, 8) if name in ("cnn", "mlp") else (8, 8))]
    atol, rtol = export.TOLERANCE[fmt]
    assert description["check"]["inputs"] > 0 and description["check"]["max_abs_difference"] <= atol + 1e-3 * rtol
    # Read back here too, independently of the export's own check, on fresh inputs of another batch size.
    model = run.model.eval()
    x = torch.randn(5, *description["inputs"]["input"]["shape"][1:])
    with torch.no_grad():
        expected = model(x)
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
    elif fmt == "exported_program":
        got = torch.export.load(str(output)).module()(x)
    else:
        state = safetensors.torch.load_file(str(output))
        assert state.keys() == model.state_dict().keys()  # backbone and head, nothing of training
        got = torch.func.functional_call(model, state, (x,))
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_an_export_that_differs_from_pytorch_fails_with_the_difference_and_leaves_no_file(
    trained, monkeypatch, litlab_main, tmp_path
):
    real = export._exported_program

    def off_by_a_little(module, example, output):
        run = real(module, example, output)
        return lambda *inputs: run(*inputs) + 0.01

    monkeypatch.setattr(export, "_exported_program", off_by_a_little)
    output = tmp_path / "cnn.pt2"
    code, _, err = litlab_main("export", "--config", str(DIGITS / "cnn.yaml"), "--ckpt_path", str(trained["cnn"]),
                               "--format", "exported_program", "--output", str(output))
    assert code == 2
    assert "gives outputs up to 0.01 away from the PyTorch model's" in err and "Traceback" not in err
    assert not output.exists()
