from functools import partial

import pytest
import torch
from torch import nn

from models.optim import configure_optimization, parameter_groups


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
