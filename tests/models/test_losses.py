"""Loss functions against their definitions, written one sample at a time."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from models.losses import clip_loss, nt_xent


def nt_xent_by_hand(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's definition, one anchor at a time."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, b = len(z), len(z1)
    losses = []
    for i in range(n):
        j = (i + b) % n
        others = [k for k in range(n) if k != i]
        similarity = torch.stack([z[i] @ z[k] for k in others]) / temperature
        positive = z[i] @ z[j] / temperature
        losses.append(-(positive - torch.logsumexp(similarity, dim=0)))
    return torch.stack(losses).mean()


def test_nt_xent_matches_the_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 8), torch.randn(5, 8)
    for t in (0.1, 0.5, 1.0):
        assert nt_xent(z1, z2, t) == pytest.approx(nt_xent_by_hand(z1, z2, t).item(), rel=1e-5)
    # Identical views are the easiest positives: a lower loss than unrelated ones.
    assert nt_xent(z1, z1.clone(), 0.5) < nt_xent(z1, z2, 0.5)


# The gathered losses under test, by name (mp.spawn pickles its arguments; lambdas do not pickle).
GATHERED = {"nt_xent": lambda a, b, gather, rank: nt_xent(a, b, 0.5, gather, rank),
            "clip": lambda a, b, gather, rank: clip_loss(a, b, 10.0, gather, rank)}


def _ranks(rank: int, world: int, port: int, loss: str, a: torch.Tensor, b: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    n = len(a) // world
    mine_a = a[rank * n : (rank + 1) * n].clone().requires_grad_()
    mine_b = b[rank * n : (rank + 1) * n].clone().requires_grad_()
    from torch.distributed.nn.functional import all_gather  # keeps gradients, as Lightning's all_gather(sync_grads=True)

    value = GATHERED[loss](mine_a, mine_b, lambda z: torch.cat(all_gather(z)), rank)
    value.backward()
    total = value.detach().clone()
    dist.all_reduce(total)
    out[rank] = (total.item() / world, mine_a.grad.clone(), mine_b.grad.clone())
    dist.destroy_process_group()


def on_two_processes(loss: str, a: torch.Tensor, b: torch.Tensor) -> dict:
    """{rank: (mean loss over ranks, grad of its rows of a, grad of its rows of b)} over two gloo processes."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.spawn(_ranks, args=(2, port, loss, a, b, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.slow
def test_negatives_gathered_across_two_processes_give_the_single_process_loss():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    whole1, whole2 = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    expected = nt_xent(whole1, whole2, 0.5)
    expected.backward()
    out = on_two_processes("nt_xent", z1, z2)
    assert out[0][0] == pytest.approx(expected.item(), rel=1e-5)
    # DDP averages gradients over ranks: each rank's gradient times 1/world must match its slice.
    for rank in (0, 1):
        grad1, grad2 = out[rank][1] / 2, out[rank][2] / 2
        assert torch.allclose(grad1, whole1.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
        assert torch.allclose(grad2, whole2.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)


def clip_loss_by_hand(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """Radford et al.'s pseudocode, one pair at a time: each image's cross entropy over all
    captions, each caption's over all images, the two averaged."""
    image, text = F.normalize(image, dim=1), F.normalize(text, dim=1)
    n, terms = len(image), []
    for i in range(n):
        to_texts = torch.stack([scale * image[i] @ text[j] for j in range(n)])
        to_images = torch.stack([scale * text[i] @ image[j] for j in range(n)])
        terms.append((-(to_texts[i] - to_texts.logsumexp(0)) - (to_images[i] - to_images.logsumexp(0))) / 2)
    return torch.stack(terms).mean()


def test_clip_loss_matches_the_definition():
    torch.manual_seed(0)
    image, text = torch.randn(5, 8), torch.randn(5, 8)
    for scale in (1.0, 14.3, 100.0):
        got = clip_loss(F.normalize(image, dim=1), F.normalize(text, dim=1), scale)
        assert got.item() == pytest.approx(clip_loss_by_hand(image, text, scale).item(), rel=1e-5)
    # Matched pairs score better than shuffled ones, and the two directions weigh the same.
    aligned = F.normalize(image, dim=1)
    assert clip_loss(aligned, aligned, 10.0) < clip_loss(aligned, aligned.roll(1, 0), 10.0)
    assert clip_loss(aligned, F.normalize(text, dim=1), 10.0) == pytest.approx(
        clip_loss(F.normalize(text, dim=1), aligned, 10.0).item())


@pytest.mark.slow
def test_clip_negatives_gathered_across_two_processes_give_the_single_process_loss_and_gradients():
    torch.manual_seed(0)
    image, text = F.normalize(torch.randn(8, 16), dim=1), F.normalize(torch.randn(8, 16), dim=1)
    whole_image, whole_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    expected = clip_loss(whole_image, whole_text, 10.0)
    expected.backward()
    out = on_two_processes("clip", image, text)
    assert out[0][0] == pytest.approx(expected.item(), rel=1e-5)
    for rank in (0, 1):  # DDP averages gradients over ranks
        assert torch.allclose(out[rank][1] / 2, whole_image.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
        assert torch.allclose(out[rank][2] / 2, whole_text.grad[rank * 4 : (rank + 1) * 4], atol=1e-6)
