import copy
from functools import partial

import pytest
import torch
from torch import nn

from models.errors import ConfigError
from models.optim import Muon, configure_optimization, hidden_matrices, parameter_groups


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))


def lrs(schedule: str, steps: int = 100, warmup: float = 0.0) -> list[float]:
    config = configure_optimization(model(), partial(torch.optim.SGD, lr=0.1), schedule, steps, warmup)
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_weight_decay_applies_to_matrices_only():
    net = model()
    decay, no_decay = parameter_groups(net)
    assert {id(p) for p in decay["params"]} == {id(net[0].weight), id(net[2].weight)}
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 4  # 2 biases, LayerNorm's 2
    optimizer = torch.optim.AdamW([decay, no_decay], weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_a_submodule_can_learn_at_a_scaled_rate():
    net = model()  # submodules "0", "1", "2"
    config = configure_optimization(net, partial(torch.optim.AdamW, lr=0.1), "cosine", 10, lr_scale={"0": 0.1})
    rates = {id(p): g["lr"] for g in config["optimizer"].param_groups for p in g["params"]}
    assert rates[id(net[0].weight)] == pytest.approx(0.01) and rates[id(net[0].bias)] == pytest.approx(0.01)
    assert rates[id(net[2].weight)] == pytest.approx(0.1)
    scheduler = config["lr_scheduler"]["scheduler"]
    assert sorted(scheduler.base_lrs) == pytest.approx([0.01, 0.01, 0.1, 0.1])


def test_frozen_parameters_are_not_optimised():
    net = model()
    net[0].requires_grad_(False)
    assert sum(len(g["params"]) for g in parameter_groups(net)) == 4


def test_constant_schedule_is_the_bare_optimizer():
    optimizer = configure_optimization(model(), partial(torch.optim.Adam, lr=0.01), "constant", 100)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 0.01


def test_cosine_decays_from_the_base_rate_to_zero_over_the_run():
    seen = lrs("cosine")
    assert seen[0] == pytest.approx(0.1) and seen[-1] < 1e-3
    assert all(a >= b for a, b in zip(seen, seen[1:]))
    assert seen[50] == pytest.approx(0.05, rel=0.05)


def test_cosine_with_warmup_ramps_up_first():
    seen = lrs("cosine", warmup=0.1)
    assert seen[0] < 0.02 and max(seen) == pytest.approx(0.1, rel=0.02)
    assert seen.index(max(seen)) == 10 and seen[-1] < 1e-3


def test_onecycle_peaks_at_the_optimizer_rate():
    seen = lrs("onecycle", warmup=0.25)
    peak = seen.index(max(seen))
    assert max(seen) == pytest.approx(0.1, rel=0.01) and 20 <= peak <= 26
    assert seen[0] < 0.01 and seen[-1] < 1e-4


# ---- Muon for the hidden matrices, AdamW for the rest ----


class Net(nn.Module):
    """An embedding, a kernel, a hidden matrix, a norm and a head: one of each kind Muon tells apart."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 6)
        self.conv = nn.Conv2d(1, 3, 3)
        self.hidden = nn.Linear(6, 6)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 5, bias=False)

    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.conv(images).mean(dim=(1, 2, 3))[:, None]
        return self.head(self.norm(torch.relu(self.hidden(x))))


def train(net: Net, optimizer: torch.optim.Optimizer, steps: int, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        tokens, images = torch.randint(0, 5, (4,), generator=g), torch.randn(4, 1, 5, 5, generator=g)
        loss = nn.functional.cross_entropy(net(tokens, images), torch.randint(0, 5, (4,), generator=g))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def muon_config(net: nn.Module, lr: float | None = None, **kwargs):
    optimizer = partial(Muon, lr=0.05, adamw_lr=0.01, weight_decay=0.1, **kwargs)
    return configure_optimization(net, optimizer, "constant", 10, lr=lr, muon_outputs={"head"})


def test_muon_takes_the_hidden_matrices_and_kernels_and_leaves_embeddings_heads_and_norms_to_adamw():
    net = Net()
    optimizer = muon_config(net)
    kinds = {id(p): (g["muon"], g["name"]) for g in optimizer.param_groups for p in g["params"]}
    assert kinds[id(net.conv.weight)] == kinds[id(net.hidden.weight)] == (True, "muon_decay")
    assert kinds[id(net.embed.weight)] == kinds[id(net.head.weight)] == (False, "adamw_decay")
    assert kinds[id(net.norm.weight)] == kinds[id(net.hidden.bias)] == (False, "adamw_no_decay")
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == {"muon_decay": 0.05, "adamw_decay": 0.01, "adamw_no_decay": 0.01}
    # A head tied to the embedding is the embedding's, whatever it is called.
    net.hidden.weight = net.embed.weight
    assert id(net.embed.weight) not in hidden_matrices(net, {"head"})
    # A learning rate set over the optimizer's keeps the ratio of AdamW's rate to Muon's.
    rates = {g["name"]: g["lr"] for g in muon_config(Net(), lr=0.1).param_groups}
    assert rates == pytest.approx({"muon_decay": 0.1, "adamw_decay": 0.02, "adamw_no_decay": 0.02})


def test_muon_steps_as_torch_muon_on_each_kernel_viewed_as_a_matrix_and_as_adamw_on_the_rest():
    torch.manual_seed(0)
    net = Net()
    reference = copy.deepcopy(net)
    train(net, muon_config(net), steps=3)
    # The same three steps by torch's own optimizers: Muon on a matrix copy of each kernel.
    kernel = nn.Parameter(reference.conv.weight.detach().flatten(1).clone())
    muon = torch.optim.Muon([kernel, reference.hidden.weight], lr=0.05, weight_decay=0.1)
    rest = [p for n, p in reference.named_parameters() if n not in ("conv.weight", "hidden.weight")]
    decay = [reference.embed.weight, reference.head.weight]
    adamw = torch.optim.AdamW([{"params": decay}, {"params": [p for p in rest if all(p is not q for q in decay)],
                                                   "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        reference.conv.weight.data = kernel.detach().view_as(reference.conv.weight).clone()
        tokens, images = torch.randint(0, 5, (4,), generator=g), torch.randn(4, 1, 5, 5, generator=g)
        loss = nn.functional.cross_entropy(reference(tokens, images), torch.randint(0, 5, (4,), generator=g))
        muon.zero_grad(), adamw.zero_grad()
        reference.conv.weight.grad = None
        loss.backward()
        kernel.grad = reference.conv.weight.grad.flatten(1)
        muon.step(), adamw.step()
    reference.conv.weight.data = kernel.detach().view_as(reference.conv.weight).clone()
    for (name, mine), theirs in zip(net.named_parameters(), reference.parameters()):
        assert torch.equal(mine, theirs), name


def test_muon_resumed_from_its_state_dict_steps_as_the_uninterrupted_optimizer():
    torch.manual_seed(0)
    net = Net()
    resumed = copy.deepcopy(net)
    optimizer = muon_config(net)
    train(net, optimizer, steps=2)
    saved_net, saved = copy.deepcopy(net.state_dict()), copy.deepcopy(optimizer.state_dict())
    train(net, optimizer, steps=3, seed=1)
    resumed.load_state_dict(saved_net)
    again = muon_config(resumed)
    again.load_state_dict(saved)
    train(resumed, again, steps=3, seed=1)
    for (name, a), b in zip(net.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name
    kernel_state = optimizer.state[net.conv.weight]
    assert kernel_state["momentum_buffer"].shape == net.conv.weight.shape  # saved in the parameter's own shape


def test_muon_given_bare_parameters_takes_those_of_two_or_more_dimensions():
    net = Net()
    optimizer = Muon(net.parameters())
    muon = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert muon == {id(p) for p in net.parameters() if p.ndim >= 2}
    with pytest.raises(ValueError, match="Muon trains matrices"):
        Muon([{"params": [net.norm.weight], "muon": True}])


def test_muon_updates_a_channels_last_kernel_as_a_contiguous_one():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3)
    other = copy.deepcopy(conv).to(memory_format=torch.channels_last)  # the kernel stored NHWC
    assert not other.weight.is_contiguous()
    images = torch.randn(3, 2, 5, 5)
    for net in (conv, other):
        optimizer = Muon(net.parameters(), lr=0.05)
        for _ in range(3):
            optimizer.zero_grad()
            net(images).square().mean().backward()
            optimizer.step()
    assert not other.weight.is_contiguous()  # still NHWC, updated in place
    assert torch.allclose(conv.weight, other.weight, atol=1e-6) and torch.allclose(conv.bias, other.bias, atol=1e-6)


def test_muon_refuses_sharded_parameters_in_one_line():
    with pytest.raises(ConfigError, match="orthogonalises whole matrices.*strategy: ddp"):
        configure_optimization(Net(), partial(Muon, lr=0.05), "constant", 10, muon_outputs={"head"}, sharded=True)
    configure_optimization(Net(), partial(torch.optim.AdamW, lr=0.05), "constant", 10, sharded=True)  # others may
