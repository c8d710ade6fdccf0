"""The dry run that sizes lazy first layers from the data contract's example input."""

import pytest
import torch
from torch import nn

from datamodules import DigitsDataModule
from models import contract
from models.backbones import CNN, MLP, Transformer
from models.errors import ConfigError
from models.lazy import has_lazy, materialize


def test_dry_run_sizes_lazy_layers_without_touching_batch_norm_statistics():
    backbone = CNN(channels=[8])
    materialize(backbone, DigitsDataModule().example_input)
    assert not has_lazy(backbone)
    assert backbone.features[0].weight.shape == (8, 1, 3, 3)
    bn = backbone.features[1]
    assert torch.equal(bn.running_mean, torch.zeros(8)) and bn.num_batches_tracked == 0
    assert backbone.training  # put back in the mode it was in


def test_the_sequence_view_sizes_a_sequence_backbone():
    backbone = MLP(width=16)
    materialize(backbone, DigitsDataModule(view="sequence").example_input)
    assert backbone.layers[1].weight.shape == (16, 64)


def test_a_task_with_two_inputs_passes_its_own_dry_run():
    image, text = MLP(width=8), Transformer(input="sequence", d_model=16, heads=2)
    pair = nn.ModuleDict({"image": image, "text": text})
    materialize(pair, torch.zeros(2, 1, 4, 4), run=lambda x: (pair["image"](x), pair["text"](torch.zeros(2, 3, 5))))
    assert image.layers[1].weight.shape == (8, 16) and text.embed.weight.shape == (16, 5)


def test_a_module_without_lazy_layers_is_left_alone():
    calls = []
    linear = nn.Linear(3, 2)
    linear.register_forward_hook(lambda *_: calls.append(1))
    materialize(linear, torch.zeros(2, 3))
    assert calls == []


class NoShape:
    num_classes = 10


def test_data_outside_the_contract_is_named_with_what_it_lacks():
    with pytest.raises(ConfigError, match=r"NoShape does not follow litlab's data contract: it has no vocab_size, example_input"):
        contract.check(NoShape())
