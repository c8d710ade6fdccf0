"""Every registered backbone on every input kind it declares, then behaviour per backbone."""

import importlib

import pytest
import torch
from torch import nn

from models.backbones import BACKBONES, CNN, MLP, RNN, Transformer

SHAPES = {"image": [(2, 3, 16, 16), (2, 1, 8, 8)], "sequence": [(2, 8, 8)], "tokens": [(2, 8)]}
CASE = ("cls", "kwargs", "kind", "shape")


def named_backbones(specs: list[str]) -> dict[str, type[nn.Module]]:
    """The backbones `pytest --backbone` names, outside litlab: `package.module` (its classes that
    `@register` records) or `package.module:Class` (that class, registered or given `examples`)."""
    found = {}
    for spec in specs:
        module_name, _, name = spec.partition(":")
        module = importlib.import_module(module_name)
        if name:
            cls = getattr(module, name, None)
            if not isinstance(cls, type) or not getattr(cls, "examples", None):
                raise pytest.UsageError(f"--backbone {spec}: {name} is not a class with examples; decorate it with "
                                        "@models.backbones.register(image={...}) (or sequence=, tokens=).")
            found[name] = cls
        else:
            registered = {key: cls for key, cls in BACKBONES.items() if cls.__module__ == module.__name__}
            found |= registered
            if not registered:
                raise pytest.UsageError(f"--backbone {spec}: the module registers no backbone; decorate one with "
                                        "@models.backbones.register(image={...}), or name it as module:Class.")
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every registered backbone, and those named with --backbone, on every input kind each declares."""
    if not set(CASE) <= set(metafunc.fixturenames):
        return
    backbones = {**BACKBONES, **named_backbones(metafunc.config.getoption("backbone"))}
    metafunc.parametrize(CASE, [
        pytest.param(cls, kwargs, kind, shape, id=f"{name}-{kind}{i}-{'x'.join(map(str, shape))}")
        for name, cls in backbones.items()
        for kind, examples in cls.examples.items()
        for i, kwargs in enumerate(examples)
        for shape in SHAPES[kind]
    ])


def make_input(kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    # Token examples must therefore use vocab_size >= 10.
    return torch.randint(0, 10, shape) if kind == "tokens" else torch.randn(shape)


def test_registered_backbone_gives_features_and_gradients(
    cls: type[nn.Module], kwargs: dict, kind: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = cls(**kwargs)
    out = model(make_input(kind, shape))
    assert out.shape == (2, model.out_features)
    assert torch.isfinite(out).all()
    # A random weighting, not a plain sum: the sum of a LayerNorm's outputs is constant,
    # so it would send no gradient to the layers before it.
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_registered_backbone_gives_unpooled_features_that_pool_to_forward(
    cls: type[nn.Module], kwargs: dict, kind: str, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = cls(**kwargs).eval()
    x = make_input(kind, shape)
    features = model.forward_features(x)
    # Convolutional maps keep channels second, (B, C, H, W); sequences and patches keep them last, (B, T, F).
    if features.ndim == 4:
        assert features.shape[:2] == (2, model.out_features)
    else:
        assert features.shape[0] == 2 and features.shape[-1] == model.out_features
    if kind in ("sequence", "tokens") and features.ndim == 3:
        extra = 1 if getattr(model, "pool", None) == "cls" else 0
        assert features.shape[1] == shape[1] + extra  # one feature vector per position
    pooled = model(x)
    if features.ndim == 4:
        assert torch.allclose(pooled, features.mean(dim=(2, 3)), atol=1e-6)
    elif getattr(model, "pool", None) == "mean":
        assert torch.allclose(pooled, features.mean(dim=1), atol=1e-6)


def test_every_backbone_declares_an_example() -> None:
    assert {"MLP", "CNN", "RNN", "Transformer"} <= set(BACKBONES)
    assert all(cls.examples and all(cls.examples.values()) for cls in BACKBONES.values())


@pytest.mark.parametrize("causal", [True, False])
def test_transformer_causal_mask_hides_later_tokens(causal: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(input="tokens", vocab_size=10, causal=causal).eval()
    x = torch.randint(0, 10, (2, 8))
    changed = x.clone()
    changed[:, -1] = (x[:, -1] + 1) % 10
    earlier_same = torch.allclose(model.forward_features(x)[:, :-1], model.forward_features(changed)[:, :-1], atol=1e-6)
    assert earlier_same == causal


@pytest.mark.parametrize(("pool", "causal"), [("mean", False), ("cls", False), ("last", True), ("last", False)])
def test_transformer_padding_changes_nothing_for_the_real_tokens(pool: str, causal: bool) -> None:
    torch.manual_seed(0)
    model = Transformer(input="tokens", vocab_size=10, d_model=32, pool=pool, causal=causal).eval()
    short = torch.randint(1, 10, (1, 5))
    padded = torch.cat([short, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # (1, 8), three padding tokens
    mask = torch.tensor([[False] * 5 + [True] * 3])
    assert torch.allclose(model(padded, padding_mask=mask), model(short), atol=1e-5)
    start = 1 if pool == "cls" else 0
    real = model.forward_features(padded, padding_mask=mask)[:, : start + 5]
    assert torch.allclose(real, model.forward_features(short), atol=1e-5)
    # Without the mask the padding is read as tokens and the result moves.
    assert not torch.allclose(model(padded), model(short), atol=1e-3)


def test_transformer_batch_of_different_lengths_equals_each_alone() -> None:
    torch.manual_seed(0)
    model = Transformer(input="tokens", vocab_size=10, d_model=32, causal=True, pool="last").eval()
    a, b = torch.randint(1, 10, (1, 6)), torch.randint(1, 10, (1, 3))
    batch = torch.cat([a, torch.cat([b, torch.zeros(1, 3, dtype=torch.long)], dim=1)])  # (2, 6)
    mask = torch.tensor([[False] * 6, [False] * 3 + [True] * 3])
    out = model(batch, padding_mask=mask)
    assert torch.allclose(out[0], model(a)[0], atol=1e-5) and torch.allclose(out[1], model(b)[0], atol=1e-5)
    assert torch.isfinite(model.forward_features(batch, padding_mask=mask)).all()


@pytest.mark.parametrize("pool", ["mean", "cls", "last"])
def test_transformer_pool_shapes(pool: str) -> None:
    model = Transformer(d_model=32, pool=pool)
    assert model(torch.randn(2, 8, 5)).shape == (2, 32)
    assert model.forward_features(torch.randn(2, 8, 5)).shape == (2, 8 + (pool == "cls"), 32)
    assert model.out_features == 32


def test_transformer_last_pool_is_the_last_token() -> None:
    torch.manual_seed(0)
    model = Transformer(causal=True, pool="last").eval()
    x = torch.randn(2, 8, 5)
    assert torch.equal(model(x), model.forward_features(x)[:, -1])


def test_transformer_rejects_bad_configs() -> None:
    with pytest.raises(ValueError, match="max_len"):
        Transformer(max_len=4)(torch.randn(2, 8, 5))
    with pytest.raises(ValueError, match="max_len"):
        Transformer(input="image", patch_size=2, max_len=15)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="patch_size"):
        Transformer(input="image", patch_size=3)(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="vocab_size"):
        Transformer(input="tokens")
    with pytest.raises(ValueError, match="divisible by heads"):
        Transformer(d_model=30, heads=4)
    with pytest.raises(ValueError, match="pool='last'"):
        Transformer(causal=True, pool="cls")


def test_transformer_cls_token_adds_one_position() -> None:
    model = Transformer(pool="cls", max_len=8)
    assert model(torch.randn(2, 8, 5)).shape == (2, 64)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_features_are_the_last_layers_outputs_at_every_step(cell: str) -> None:
    torch.manual_seed(0)
    model = RNN(cell, hidden_size=16, num_layers=2, bidirectional=True)
    x = torch.randn(2, 8, 5)
    features, pooled = model.forward_features(x), model(x)
    assert features.shape == (2, 8, 32)
    # The final states are the forward direction's last step and the backward direction's first.
    assert torch.allclose(pooled, torch.cat([features[:, -1, :16], features[:, 0, 16:]], dim=1), atol=1e-6)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_rnn_bidirectional_doubles_features(cell: str) -> None:
    one, two = RNN(cell, hidden_size=16), RNN(cell, hidden_size=16, num_layers=2, bidirectional=True)
    x = torch.randn(2, 8, 5)
    assert (one.out_features, two.out_features) == (16, 32)
    assert one(x).shape == (2, 16) and two(x).shape == (2, 32)


def test_rnn_summary_depends_on_early_steps() -> None:
    torch.manual_seed(0)
    model = RNN("gru", hidden_size=16)
    x = torch.randn(2, 8, 5)
    changed = x.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(model(x), model(changed))


def test_cnn_eval_is_deterministic_and_per_sample() -> None:
    torch.manual_seed(0)
    model = CNN(channels=[8, 16], dropout=0.5)
    x = torch.randn(4, 1, 8, 8)
    train_out = model(x)  # batch statistics: each output depends on the whole batch
    assert not torch.allclose(train_out[:1], model(x[:1]))
    model.eval()  # running statistics and no dropout
    assert torch.equal(model(x), model(x))
    assert torch.allclose(model(x)[:1], model(x[:1]), atol=1e-6)


@pytest.mark.parametrize("depth", [1, 3])
def test_mlp_depth_is_the_number_of_linear_layers(depth: int) -> None:
    model = MLP(depth=depth, width=16)
    assert model(torch.randn(2, 3, 4)).shape == (2, 16)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == depth


def test_mlp_rejects_zero_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        MLP(depth=0)
