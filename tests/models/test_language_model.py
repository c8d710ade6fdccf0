"""LanguageModel: the head is the embedding, a causal model never looks ahead, the objective
must match the backbone, generation is repeatable under a seed, and both objectives learn the
embedded corpus well below the uniform 8 bits per byte."""

import csv
import math
from pathlib import Path

import pytest
import torch

from datamodules.text import VOCAB_SIZE, decode, encode
from experiments.cli import DEFAULTS
from models.backbones import MLP, Transformer
from models.errors import ConfigError
from models.language_model import LanguageModel
from models.optim import parameter_groups


def gpt(**kwargs) -> LanguageModel:
    torch.manual_seed(0)
    backbone = Transformer(input="tokens", vocab_size=VOCAB_SIZE, causal=True, d_model=32, depth=2, max_len=64)
    return LanguageModel(backbone, **kwargs)


def test_the_head_is_the_token_embedding_and_embeddings_are_not_decayed():
    model = gpt()
    assert model.head.weight is model.backbone.embed.weight
    groups = parameter_groups(model, no_decay=model.no_decay)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))  # the tied matrix once
    undecayed = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    assert id(model.backbone.embed.weight) in undecayed and id(model.backbone.pos.weight) in undecayed
    assert id(model.backbone.blocks[0].attn.qkv.weight) not in undecayed


def test_a_causal_model_never_looks_ahead():
    model = gpt().eval()
    tokens = torch.randint(0, 256, (1, 20))
    changed = tokens.clone()
    changed[0, 12:] = torch.randint(0, 256, (8,))
    assert torch.allclose(model(tokens)[0, :12], model(changed)[0, :12], atol=1e-6)


@pytest.mark.parametrize(
    "backbone, objective, message",
    [
        (lambda: Transformer(input="tokens", vocab_size=VOCAB_SIZE, causal=False), "causal", "needs a backbone with causal: true"),
        (lambda: Transformer(input="tokens", vocab_size=VOCAB_SIZE, causal=True), "masked", "needs a backbone with causal: false"),
        (lambda: MLP(), "causal", "needs a token backbone"),
    ],
)
def test_an_objective_the_backbone_cannot_serve_is_refused(backbone, objective, message):
    with pytest.raises(ConfigError, match=message):
        LanguageModel(backbone(), objective=objective)


def test_generation_is_repeatable_under_a_seed_and_decodes_to_text():
    model = gpt()
    prompt = encode("def ")
    runs = [model.generate(prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(7))
            for _ in range(2)]
    assert torch.equal(*runs) and len(runs[0]) == 30
    assert isinstance(decode(runs[0]), str)
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(greedy, model.generate(prompt, 10, temperature=0))
    assert model.training  # generation leaves the mode as it found it


@pytest.mark.parametrize("objective, ceiling", [("causal", 4.0), ("masked", 5.0)])
def test_both_objectives_learn_the_corpus_far_below_uniform(cli, objective, ceiling):
    # 2 epochs (182 steps) of a small model on CPU (seconds): uniform guessing is log2(259) = 8.0 bits per byte.
    run = cli(
        "fit", "--config", str(DEFAULTS.parent / "text" / ("gpt_small.yaml" if objective == "causal" else "bert_small.yaml")),
        "--trainer.max_epochs=2", "--trainer.limit_val_batches=20",
        "--model.backbone.d_model=64", "--model.backbone.depth=2",
    )
    bpb = float(run.trainer.callback_metrics["test/bpb"])
    assert bpb == pytest.approx(float(run.trainer.callback_metrics["test/loss"]) / math.log(2))
    assert bpb < ceiling < math.log2(VOCAB_SIZE)


def test_samples_after_validation_and_predict_continues_a_prompts_file(cli, capsys, tmp_path):
    gpt_yaml = str(DEFAULTS.parent / "text" / "gpt_small.yaml")
    small = ["--model.backbone.d_model=32", "--model.backbone.depth=1"]
    fitted = cli("fit", "--config", gpt_yaml, *small, "--trainer.max_epochs=1", "--trainer.limit_train_batches=5",
                 "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2")
    out = capsys.readouterr().out
    assert "[epoch 0] 'def ' -> 'def " in out and "[epoch 0] 'import ' -> 'import " in out  # TextSamples
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def f(x):\n\nLe café\n", encoding="utf-8")  # a blank line is skipped
    checkpoint = fitted.trainer.checkpoint_callback.best_model_path
    tables = []
    for _ in range(2):
        run = cli("predict", "--config", gpt_yaml, *small, f"--ckpt_path={checkpoint}", f"--data.prompts_file={prompts}")
        with open(Path(run.trainer.log_dir) / "predictions.csv", newline="", encoding="utf-8") as f:
            tables.append(list(csv.DictReader(f)))
    assert [row["prompt"] for row in tables[0]] == ["def f(x):", "Le café"]
    assert all(len(row["continuation"]) > 0 for row in tables[0])
    assert tables[0] == tables[1]  # seeded: the same continuations every time


def test_a_pretrained_gpt_backbone_loads_into_finetune_for_text_classification(tmp_path):
    from models.finetune import FineTune

    lm = gpt()
    torch.save(lm.state_dict(), tmp_path / "gpt.pt")
    backbone = Transformer(input="tokens", vocab_size=VOCAB_SIZE, causal=True, d_model=32, depth=2, max_len=64, pool="last")
    task = FineTune(backbone=backbone, num_classes=4, checkpoint=str(tmp_path / "gpt.pt"))
    expected = lm.backbone.state_dict()
    assert all(torch.equal(value, task.backbone.state_dict()[key]) for key, value in expected.items())
    tokens, padding = torch.randint(0, 256, (2, 10)), torch.zeros(2, 10, dtype=torch.bool)
    padding[1, 6:] = True
    logits = task(tokens, padding)
    assert logits.shape == (2, 4)
    alone = task(tokens[1:, :6])  # the padded text gives what the text alone gives
    assert torch.allclose(logits[1], alone[0], atol=1e-5)
