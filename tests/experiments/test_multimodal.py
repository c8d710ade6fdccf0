"""CLIP on the captioned digits, run as shipped: zero-shot classification of held-out digits from
phrasings no training caption has, retrieval far above chance, `litlab predict` agreeing with the
test, and its image tower as pretraining for few labels."""

import csv

import pytest
import torch
from torchvision.io import write_png

from experiments.cli import DEFAULTS

CLIP_YAML = str(DEFAULTS.parent / "multimodal" / "digits_clip.yaml")
FINETUNE_YAML = str(DEFAULTS.parent / "digits" / "finetune.yaml")


def chance_recall(caption_ids: torch.Tensor) -> float:
    """Recall@1 of a random ranking: for each query, the share of the set that matches it."""
    same = (caption_ids[:, None] == caption_ids[None, :]).sum(dim=1).float()
    return float((same / len(caption_ids)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_clip_classifies_held_out_digits_zero_shot_and_retrieves_far_above_chance(cli, seed, tmp_path):
    # Measured test zero-shot accuracy of this recipe: 93.3%, 91.7% and 96.7% for seeds 0, 1, 2 (docs/clip.md);
    # the test holds seeds 0 and 1, the weakest among them, at two thirds the cost.
    run = cli("fit", "--config", CLIP_YAML, f"--seed_everything={seed}")
    metrics = run.trainer.callback_metrics
    assert float(metrics["test/zeroshot_acc"]) >= 0.90  # chance is 0.10
    chance = chance_recall(run.datamodule.test_dataset.dataset.caption_ids)
    for direction in ("i2t", "t2i"):
        assert float(metrics[f"test/{direction}_recall@1"]) >= 10 * chance, direction
    if seed == 0:
        # `litlab predict` classifies the same test images as the test did, from the same prompts.
        checkpoint = run.trainer.checkpoint_callback.best_model_path
        predicted = cli("predict", "--config", CLIP_YAML, "--ckpt_path", checkpoint)
        with open(f"{predicted.trainer.log_dir}/predictions.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(run.datamodule.test_dataset)
        accuracy = sum(row["pred"] == row["target"] for row in rows) / len(rows)
        assert accuracy == pytest.approx(float(metrics["test/zeroshot_acc"]), abs=1e-6)
        # New image files, against the same class prompts: each row names its file and its class by word,
        # with the model's own zero-shot probabilities.
        folder = tmp_path / "new"
        folder.mkdir()
        images = run.datamodule.test_dataset.dataset
        pixels = {}
        for i in range(3):
            image = (images[i]["input"] * 255).round().to(torch.uint8)  # (1, 8, 8) in [0, 1] before normalising
            write_png(image, str(folder / f"{i}.png"))
            pixels[str(folder / f"{i}.png")] = image
        new = cli("predict", "--config", CLIP_YAML, "--ckpt_path", checkpoint, "--inputs", str(folder))
        with open(f"{new.trainer.log_dir}/predictions.csv") as f:
            rows = list(csv.DictReader(f))
        model, data = new.model.eval(), new.datamodule
        assert [row["input"] for row in rows] == sorted(pixels) and "target" not in rows[0]
        for row in rows:
            x = ((pixels[row["input"]].float() / 255 - data.mean[0]) / data.std[0])[None]
            with torch.no_grad():
                probs = (model.scale * model.encode_image(x) @ model.class_embeddings.T).softmax(-1)[0]
            assert row["pred"] == data.classes[int(probs.argmax())]
            assert [float(row[f"prob_{name}"]) for name in data.classes] == pytest.approx(probs.tolist(), abs=1e-5)
        # The image tower as pretraining: a linear probe on it with 5% of the labels (63 images),
        # against the digits fine-tuning recipe trained from random weights. Measured: 97.5% against 90.8%.
        def finetuned(*args: str) -> float:
            return float(cli("fit", "--config", FINETUNE_YAML, *args).trainer.callback_metrics["test/acc"])

        probe = finetuned(f"--model.checkpoint={run.trainer.log_dir}", "--model.mode=linear")
        scratch = finetuned("--model.checkpoint=null")
        assert probe >= scratch + 0.04, (probe, scratch)

