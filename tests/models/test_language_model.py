"""LanguageModel: the head is the embedding, a causal model never looks ahead, the objective
must match the backbone, compiling changes nothing, generation is repeatable under a seed, a
masked model learns the embedded corpus far below the uniform 8 bits per byte, and a short
causal pretraining beats zlib on held-out text and pays off when fine-tuned on few labels, and Muon
trains the small GPT further than AdamW in the same steps."""

import csv
import math
import statistics
import zlib
from pathlib import Path

import pytest
import torch

from models.tokenizer import VOCAB_SIZE, decode, encode
from experiments.cli import DEFAULTS
from models.backbones import MLP, Transformer
from models.errors import ConfigError
from models.language_model import LanguageModel
from datamodules.text import TextDataModule
from models.optim import parameter_groups

TEXT = DEFAULTS.parent / "text"


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


@pytest.mark.slow
def test_compile_changes_neither_the_loss_nor_the_gradients_nor_the_checkpoint_keys():
    def tiny(**kwargs) -> LanguageModel:  # one block: compiling costs seconds per graph
        torch.manual_seed(0)
        return LanguageModel(Transformer(input="tokens", vocab_size=VOCAB_SIZE, causal=True, d_model=16, depth=1,
                                         heads=2, max_len=16), **kwargs)

    eager, compiled = tiny(), tiny(compile=True)  # the same weights
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints load either way
    tokens = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(0))
    batch = {"input": tokens[:, :-1], "target": tokens[:, 1:]}
    losses = [model.loss(batch)[0] for model in (eager, compiled)]
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for loss in losses:
        loss.backward()
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


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


@pytest.mark.slow
def test_the_masked_objective_learns_the_corpus_far_below_uniform(cli):
    # 1 epoch (91 steps) of a small model on CPU (seconds): uniform guessing is log2(259) = 8.0 bits per
    # byte; measured 4.75 (4.39 after 2 epochs).
    run = cli(
        "fit", "--config", str(TEXT / "bert_small.yaml"), "--trainer.max_epochs=1", "--trainer.limit_val_batches=20",
        "--model.backbone.d_model=64", "--model.backbone.depth=2",
    )
    bpb = float(run.trainer.callback_metrics["test/bpb"])
    assert bpb == pytest.approx(float(run.trainer.callback_metrics["test/loss"]) / math.log(2))
    assert bpb < 5.0 < math.log2(VOCAB_SIZE)


@pytest.mark.slow
def test_a_short_pretraining_beats_zlib_on_held_out_text_and_pays_off_in_few_label_fine_tuning(cli):
    # gpt_small.yaml narrowed to a d64 x 2 model with a 64-byte context, 6 epochs (1,092 steps of
    # 32 windows), about 35 s on one core; the shipped recipe (d128 x 4, 128 bytes, 12 epochs)
    # reaches 2.12 bits per byte in about 3 minutes.
    size = ["--model.backbone.d_model=64", "--model.backbone.depth=2", "--model.backbone.max_len=64"]
    gpt = cli("fit", "--config", str(TEXT / "gpt_small.yaml"), *size, "--data.block_size=64",
              "--model.optimizer.init_args.lr=0.012", "--trainer.max_epochs=6", "--model.sample_prompts=null")
    path, bounds = gpt.datamodule.cached_corpus()
    start, end = bounds["test"]
    held_out = path.read_bytes()[start:end]  # documents and their separators, one token each
    zlib_bpb = 8 * len(zlib.compress(held_out, 9)) / len(held_out)
    bpb = float(gpt.trainer.callback_metrics["test/bpb"])
    # Measured 2.166 (zlib -9: 2.27 on the same 46 KB); held a little above, and always below zlib.
    assert bpb < 2.22 and bpb < zlib_bpb

    # gpt_finetune.yaml at this size: 5% of the labels (245 passages of 64 bytes), four classes
    # (chance 25%), 5 epochs; the pretrained weights against the same recipe from scratch.
    checkpoint = gpt.trainer.checkpoint_callback.best_model_path
    narrow = [*size, "--data.max_len=64", "--data.label_fraction=0.05", "--trainer.max_epochs=5",
              "--trainer.check_val_every_n_epoch=5", "--model.optimizer.init_args.lr=0.006"]
    # LoRA (gpt_lora.yaml) on the same pretrained GPT: rank-2 adapters on every attention and MLP
    # projection and the head, 4,356 of 125,124 parameters (3.5%), at a higher rate than full fine-tuning's.
    lora = [*narrow, "--model.lora_rank=2", "--model.lora_alpha=4", "--model.optimizer.init_args.lr=0.02",
            f"--model.checkpoint={checkpoint}"]
    scratch, pretrained, adapted = [], [], []
    for seed in (0, 1):
        finetune = ["fit", "--config", str(TEXT / "gpt_finetune.yaml"), *narrow, f"--seed_everything={seed}"]
        pretrained.append(float(cli(*finetune, f"--model.checkpoint={checkpoint}").trainer.callback_metrics["test/acc"]))
        scratch.append(float(cli(*finetune, "--model.checkpoint=null").trainer.callback_metrics["test/acc"]))
        run = cli("fit", "--config", str(TEXT / "gpt_lora.yaml"), *lora, f"--seed_everything={seed}")
        adapted.append(float(run.trainer.callback_metrics["test/acc"]))
        trained = sum(p.numel() for p in run.model.parameters() if p.requires_grad)
        assert trained <= 0.05 * sum(p.numel() for p in run.model.parameters())
    print(f"test/bpb {bpb:.3f} (zlib {zlib_bpb:.3f}); scratch {scratch} pretrained {pretrained} lora {adapted}")
    # Measured: scratch 34.2 / 34.0 / 35.4%, pretrained 41.9 / 43.7 / 40.3% (seeds 0, 1, 2), a 7.4-point mean gain;
    # the test holds seeds 0 and 1 (8.7 points) at two thirds the cost.
    assert all(p > s for p, s in zip(pretrained, scratch))
    assert statistics.mean(pretrained) - statistics.mean(scratch) >= 0.04
    # Measured: LoRA 43.8 / 42.7 / 44.3% (mean 43.6), full fine-tuning 41.9 / 43.7 / 40.3% (mean 41.9).
    # Within 2 points of full fine-tuning, as the claim asks, and far above scratch on every seed.
    assert statistics.mean(adapted) >= statistics.mean(pretrained) - 0.02
    assert all(a > s + 0.04 for a, s in zip(adapted, scratch))


@pytest.mark.slow
def test_samples_after_validation_and_predict_continues_a_prompts_file(cli, capsys, tmp_path):
    gpt_yaml = str(TEXT / "gpt_small.yaml")
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
    # --inputs names the prompts, and the sampling is set on the model: temperature 0 is the greedy continuation.
    run = cli("predict", "--config", gpt_yaml, *small, f"--ckpt_path={checkpoint}", "--inputs", str(prompts),
              "--model.temperature=0", "--model.max_new_tokens=6")
    with open(Path(run.trainer.log_dir) / "predictions.csv", newline="", encoding="utf-8") as f:
        greedy = list(csv.DictReader(f))
    assert [row["prompt"] for row in greedy] == ["def f(x):", "Le café"]
    for row in greedy:
        assert row["continuation"] == decode(run.model.generate(encode(row["prompt"]), 6, temperature=0))


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


@pytest.mark.slow
def test_a_small_llama_with_a_bpe_tokenizer_trained_here_beats_zlib_on_held_out_text(cli, bpe_tokenizer):
    # llama_small.yaml narrowed to a d64 x 2 decoder over 64-token windows, with the 512-id BPE
    # tokenizer `litlab tokenizer` trained on the training split (the fixture), 6 epochs.
    llama = cli("fit", "--config", str(TEXT / "llama_small.yaml"), f"--data.tokenizer={bpe_tokenizer}",
                "--data.block_size=64", "--trainer.max_epochs=6", "--model.sample_prompts=null",
                "--model.optimizer.init_args.lr=0.01",
                '--model.backbone.init_args.config_overrides={"hidden_size": 64, "num_hidden_layers": 2, '
                '"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 170, '
                '"max_position_embeddings": 64, "tie_word_embeddings": true}')
    assert llama.model.backbone.vocab_size == 512  # linked from the data's tokenizer
    data = llama.datamodule
    byte_level = TextDataModule(cache_dir=str(data.cache_dir))
    path, bounds = byte_level.cached_corpus()
    start, end = bounds["test"]
    held_out = path.read_bytes()[start:end]  # the same documents as the BPE split's, with their ends
    zlib_bpb = 8 * len(zlib.compress(held_out, 9)) / len(held_out)
    metrics = llama.trainer.callback_metrics
    bpb = float(metrics["test/bpb"])
    # Bits per byte, not per token: the loss in nats per token times the split's tokens per byte.
    assert bpb == pytest.approx(float(metrics["test/loss"]) * data.tokens_per_byte["test"] / math.log(2), rel=1e-5)
    # Measured 2.094 (zlib -9: 2.27 on the same documents); the byte-level GPT of the test above gets
    # 2.166 at a like size and budget. Held a little above, and always below zlib.
    assert bpb < 2.15 and bpb < zlib_bpb


@pytest.mark.slow
def test_muon_trains_the_small_gpt_further_than_adamw_in_the_same_steps(cli):
    # gpt_muon.yaml against gpt_small.yaml, narrowed as above (AdamW at the test's 0.012, Muon's AdamW
    # groups too), one epoch of 182 steps each, seed 0: the tied embedding, the norms and the biases
    # learn by the same AdamW; only the blocks' matrices are trained by Muon instead.
    narrow = ["--model.backbone.d_model=64", "--model.backbone.depth=2", "--model.backbone.max_len=64",
              "--data.block_size=64", "--trainer.max_epochs=1", "--model.sample_prompts=null", "--seed_everything=0"]
    adamw = cli("fit", "--config", str(TEXT / "gpt_small.yaml"), *narrow, "--model.optimizer.init_args.lr=0.012")
    muon = cli("fit", "--config", str(TEXT / "gpt_muon.yaml"), *narrow, "--model.optimizer.init_args.adamw_lr=0.012")
    groups = {g["name"]: len(g["params"]) for g in muon.trainer.optimizers[0].param_groups}
    # Muon: each block's qkv, attention projection and two MLP matrices; AdamW: the tied embedding,
    # the positions, the norms and the biases (none decayed, as in gpt_small.yaml).
    assert groups == {"muon_decay": 8, "adamw_no_decay": 20}
    adamw_bpb, muon_bpb = (float(run.trainer.callback_metrics["test/bpb"]) for run in (adamw, muon))
    print(f"test/bpb after one epoch: AdamW {adamw_bpb:.3f}, Muon {muon_bpb:.3f}")
    # Measured 3.994 against 3.100; held to a fifth of that gap (benchmarks/muon.py has 3 seeds at 6 epochs).
    assert muon_bpb < adamw_bpb - 0.2
