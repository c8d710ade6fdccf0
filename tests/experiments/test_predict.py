"""`litlab predict --inputs`: new files predicted on, each row naming its file and its classes."""

import csv
import json
from pathlib import Path

import pytest
import torch
from sklearn.datasets import load_digits
from torchvision.io import write_png

from experiments.cli import DEFAULTS
from models.tokenizer import tokenize

MLP = str(DEFAULTS.parent / "digits" / "mlp.yaml")


@pytest.mark.slow
def test_predict_on_new_image_files_names_each_file_and_its_classes(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted = cli("fit", "--config", MLP, "--trainer.max_epochs=2")
    digits = load_digits()
    folder = tmp_path / "new"
    (folder / "more").mkdir(parents=True)
    pixels = {}
    for i, name in enumerate(["a.png", "more/b.png", "c.png"]):
        image = torch.as_tensor(digits.images[i] * 255 / 16).round().to(torch.uint8)[None]  # (1, 8, 8)
        write_png(image, str(folder / name))
        pixels[str(folder / name)] = image
    (folder / "notes.txt").write_text("not an image")

    predicted = cli("predict", "--config", MLP, "--ckpt_path", fitted.trainer.log_dir, "--inputs", str(folder))
    out = Path(fitted.trainer.log_dir) / "predict" / "predictions.csv"
    rows = list(csv.DictReader(out.open()))
    assert [row["input"] for row in rows] == sorted(pixels)  # every image, and nothing else
    assert "target" not in rows[0]
    # The model's own output on each file's pixels, normalised with the training split's statistics.
    model, data = predicted.model.eval(), predicted.datamodule
    for row in rows:
        x = (pixels[row["input"]].float() / 255 - data.mean[0]) / data.std[0]
        with torch.no_grad():
            probs = model(x[None]).softmax(-1)[0]
        assert row["pred"] == str(int(probs.argmax()))
        assert [float(row[f"prob_{c}"]) for c in range(10)] == pytest.approx(probs.tolist(), abs=1e-5)
        assert row["top_k"].split("; ")[0] == f"{row['pred']} {float(row['prob']):.3f}"

    # A list names files relative to itself, and never one outside its folder.
    (folder / "list.txt").write_text("# two of them\nc.png\n\nmore/b.png\n")
    cli("predict", "--config", MLP, "--ckpt_path", fitted.trainer.log_dir, "--inputs", str(folder / "list.txt"))
    rows = list(csv.DictReader(out.open()))
    assert [row["input"] for row in rows] == [str(folder / "c.png"), str(folder / "more" / "b.png")]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["csv", "jsonl", "txt"])
def test_predict_on_new_texts_names_each_text_and_its_class(cli, tmp_path, monkeypatch, kind):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "labelled.csv").write_text("text,label\n" + "".join(
        f'"{text}",{label}\n' for text, label in [("a fine day", "weather"), ("import os", "code")] * 12))
    small = ["--config", str(DEFAULTS.parent / "text" / "gpt_finetune.yaml"), "--model.checkpoint=null",
             "--data.source=labelled.csv", "--data.label_fraction=1", "--data.max_len=16", "--data.val_fraction=0.2",
             "--model.backbone.init_args.max_len=16", "--model.backbone.init_args.d_model=16",
             "--model.backbone.init_args.depth=1", "--model.backbone.init_args.heads=2"]
    fitted = cli("fit", *small, "--trainer.max_epochs=1")
    texts = ["sunny, then rain", "import sys", "x, y = 1, 2"]
    inputs = tmp_path / f"new.{kind}"
    inputs.write_text({"csv": "label,text\n" + "".join(f'?,"{t}"\n' for t in texts),
                       "jsonl": "".join(json.dumps({"text": t}) + "\n" for t in texts),
                       "txt": "\n".join(texts) + "\n\n"}[kind])
    predicted = cli("predict", *small, "--ckpt_path", fitted.trainer.log_dir, "--inputs", str(inputs))
    rows = list(csv.DictReader((Path(fitted.trainer.log_dir) / "predict" / "predictions.csv").open()))
    assert [row["input"] for row in rows] == texts
    model, classes = predicted.model.eval(), predicted.datamodule.classes
    tokens, padding = tokenize([t.encode() for t in texts], 16)
    with torch.no_grad():
        probs = model(tokens, padding).softmax(-1)
    for row, p in zip(rows, probs):
        assert row["pred"] == classes[int(p.argmax())]
        assert [float(row[f"prob_{name}"]) for name in classes] == pytest.approx(p.tolist(), abs=1e-5)
    # The class names are saved with the run's checkpoints, and a prediction names its classes by
    # them, whatever the data configured at predict time calls its labels.
    best = fitted.trainer.checkpoint_callback.best_model_path
    assert torch.load(best, weights_only=True)["classes"] == classes == ["code", "weather"]
    if kind == "csv":
        (tmp_path / "renamed.csv").write_text("text,label\n" + "".join(
            f'"{text}",{label}\n' for text, label in [("a fine day", "b"), ("import os", "a")] * 12))
        cli("predict", *small, "--data.source=renamed.csv", "--ckpt_path", best, "--inputs", str(inputs))
        again = list(csv.DictReader((Path(fitted.trainer.log_dir) / "predict" / "predictions.csv").open()))
        assert [row["pred"] for row in again] == [row["pred"] for row in rows]
