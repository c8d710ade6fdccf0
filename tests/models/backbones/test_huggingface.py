"""models.backbones.HuggingFace against transformers' own models, on tiny random models written
with plain `save_pretrained` into a temporary folder (nothing is downloaded)."""

import json

import pytest
import torch

from models.backbones import HuggingFace
from models.errors import ConfigError

transformers = pytest.importorskip("transformers")

TINY = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}
TEXT = {
    "bert": transformers.BertConfig(**TINY, vocab_size=40, max_position_embeddings=32),
    "gpt2": transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=32),
    # Tied, as the small Llamas (3.2 1B and 3B) are.
    "llama": transformers.LlamaConfig(**TINY, num_key_value_heads=1, vocab_size=40, max_position_embeddings=32,
                                      tie_word_embeddings=True),
}


def saved(tmp_path, config, auto=transformers.AutoModel) -> str:
    torch.manual_seed(0)
    folder = tmp_path / config.model_type
    auto.from_config(config).save_pretrained(folder)
    return str(folder)


def tokens_and_padding() -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(1, 40, (3, 7), generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(3, 7, dtype=torch.bool)
    padding[1, 5:] = True  # right padding, as litlab's text data pads
    padding[2, 2:] = True
    return tokens, padding


@pytest.mark.parametrize("kind", sorted(TEXT))
def test_text_features_equal_the_librarys_own_model_padding_included(tmp_path, kind):
    folder = saved(tmp_path, TEXT[kind])
    ours = HuggingFace(name=folder).eval()
    theirs = transformers.AutoModel.from_pretrained(folder).eval()
    tokens, padding = tokens_and_padding()
    with torch.no_grad():
        features = ours.forward_features(tokens, padding)
        expected = theirs(input_ids=tokens, attention_mask=(~padding).long()).last_hidden_state
        alone = theirs(input_ids=tokens[2:, :2]).last_hidden_state  # the third text without its padding
    real = ~padding
    torch.testing.assert_close(features[real], expected[real], rtol=0, atol=1e-6)
    # Padding changes nothing for the real tokens: the mask reached the model.
    torch.testing.assert_close(features[2, :2], alone[0], rtol=0, atol=1e-5)
    assert ours.out_features == features.shape[-1] == 16


def test_pooling_reads_real_tokens_only(tmp_path):
    tokens, padding = tokens_and_padding()
    for pool in ("mean", "first", "last"):
        model = HuggingFace(name=saved(tmp_path, TEXT["llama"]), pool=pool).eval()
        with torch.no_grad():
            features, pooled = model.forward_features(tokens, padding), model(tokens, padding)
        lengths = (~padding).sum(dim=1)
        for i, n in enumerate(lengths.tolist()):
            want = {"mean": features[i, :n].mean(0), "first": features[i, 0], "last": features[i, n - 1]}[pool]
            torch.testing.assert_close(pooled[i], want, rtol=0, atol=1e-6)


def test_vision_features_equal_the_librarys_own_model(tmp_path):
    config = transformers.ViTConfig(**TINY, image_size=16, patch_size=4)
    folder = saved(tmp_path, config)
    ours, theirs = HuggingFace(name=folder, pool="first").eval(), transformers.AutoModel.from_pretrained(folder).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        features = ours.forward_features(images)
        expected = theirs(pixel_values=images).last_hidden_state
    torch.testing.assert_close(features, expected, rtol=0, atol=1e-6)
    assert features.shape == (2, 1 + 16, 16) and torch.equal(ours(images), features[:, 0])
    with torch.no_grad():  # a grey image of another size: repeated to three channels, positions interpolated
        assert ours(torch.randn(2, 1, 8, 8)).shape == (2, 16)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_a_decoder_keeps_its_own_tied_head_and_gives_the_librarys_logits_in_a_language_model(tmp_path, kind):
    from models import LanguageModel

    folder = saved(tmp_path, TEXT[kind], transformers.AutoModelForCausalLM)
    backbone = HuggingFace(name=folder, lm_head="causal")
    model = LanguageModel(backbone=backbone).eval()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    tokens, _ = tokens_and_padding()
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), theirs(input_ids=tokens).logits, rtol=0, atol=1e-6)
    head, embed = backbone.model.get_output_embeddings(), backbone.model.get_input_embeddings()
    assert head.weight is embed.weight  # tied, as the model was saved
    # One copy of each weight in the state dict: the wrapper registers the model once.
    assert not any(key.startswith("head.") for key in model.state_dict())
    assert len(list(model.parameters())) == len(list(theirs.parameters()))
    continuation = model.generate(tokens[0], 3, temperature=0)
    assert continuation.shape == (3,)


def test_a_model_without_its_language_head_is_refused_by_a_language_model(tmp_path):
    from models import LanguageModel

    with pytest.raises(ConfigError, match="HuggingFace with lm_head"):
        LanguageModel(backbone=HuggingFace(architecture="gpt2", config_overrides={"n_embd": 16, "n_layer": 1, "n_head": 2}))


def test_from_an_architecture_with_overrides_and_the_datas_vocabulary(tmp_path):
    model = HuggingFace(architecture="llama", config_overrides={**TINY, "num_key_value_heads": 1}, vocab_size=300)
    assert model.vocab_size == 300 and model.model.get_input_embeddings().num_embeddings == 300
    assert model.out_features == 16 and model.block_classes == {"LlamaDecoderLayer"}
    # A pretrained model's vocabulary is its tokenizer's: another one would read the wrong rows.
    with pytest.raises(ConfigError, match="vocabulary of 40 tokens but the data's tokenizer has 300"):
        HuggingFace(name=saved(tmp_path, TEXT["bert"]), vocab_size=300)


def test_pretrained_weights_are_built_in_training_mode_with_their_dropout_on(tmp_path):
    # from_pretrained returns a model in eval mode, and Lightning keeps each module's mode through a fit.
    model = HuggingFace(name=saved(tmp_path, TEXT["bert"]))
    assert all(module.training for module in model.modules())
    tokens, padding = tokens_and_padding()
    assert not torch.equal(model(tokens, padding), model(tokens, padding))  # BERT's dropout of 0.1
    model.eval()
    assert torch.equal(model(tokens, padding), model(tokens, padding))


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    folder = saved(tmp_path, TEXT["bert"])
    tokens, padding = tokens_and_padding()
    grads = []
    for checkpointing in (False, True):
        model = HuggingFace(name=folder, gradient_checkpointing=checkpointing).train()
        model.model.config.hidden_dropout_prob = 0.0
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(tokens, padding).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert model.model.is_gradient_checkpointing
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_a_model_that_needs_its_own_code_is_refused_and_its_code_never_runs(tmp_path):
    folder = tmp_path / "remote"
    folder.mkdir()
    ran = tmp_path / "ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "litlab_custom", "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                                                    "AutoModel": "modeling_custom.CustomModel"}}))
    (folder / "configuration_custom.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n")
    with pytest.raises(ConfigError, match="needs code that is not part of transformers") as refused:
        HuggingFace(name=str(folder))
    assert len(str(refused.value).splitlines()) == 1 and not ran.exists()


def test_a_hub_id_that_cannot_be_reached_points_to_the_folder_form(monkeypatch):
    # HF_HUB_OFFLINE=1, as huggingface_hub reads it once at import: no request leaves the machine.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="set name to the folder"):
        HuggingFace(name="litlab-tests/no-such-model")


def test_one_of_name_or_architecture(tmp_path):
    with pytest.raises(ConfigError, match="got neither"):
        HuggingFace()
    with pytest.raises(ConfigError, match="no model type 'nope'"):
        HuggingFace(architecture="nope")


def test_a_head_the_model_does_not_have_is_one_line():
    with pytest.raises(ConfigError, match="no AutoModelForMaskedLM for gpt2 models") as refused:
        HuggingFace(architecture="gpt2", lm_head="masked", config_overrides={"n_embd": 16, "n_layer": 1, "n_head": 2})
    assert len(str(refused.value).splitlines()) == 1


def test_a_bin_weights_file_that_would_run_code_is_refused_and_never_runs(tmp_path):
    import os

    folder, ran = tmp_path / "bin", tmp_path / "ran"
    TEXT["bert"].save_pretrained(folder)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {ran}",)

    torch.save({"embeddings.word_embeddings.weight": Payload()}, folder / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="holds more than tensors") as refused:
        HuggingFace(name=str(folder))
    assert len(str(refused.value).splitlines()) == 1 and not ran.exists()
    # The same model's weights as plain tensors in a .bin file load.
    torch.manual_seed(0)
    theirs = transformers.AutoModel.from_config(TEXT["bert"])
    torch.save(theirs.state_dict(), folder / "pytorch_model.bin")
    ours = HuggingFace(name=str(folder))
    assert torch.equal(ours.encoder.embeddings.word_embeddings.weight, theirs.embeddings.word_embeddings.weight)
