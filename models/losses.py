"""Loss functions as pure functions of tensors: no modules, no state, testable by hand."""

from collections.abc import Callable

import torch
import torch.nn.functional as F

Gather = Callable[[torch.Tensor], torch.Tensor]


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5, gather: Gather | None = None, rank: int = 0
) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy (Chen et al., 2020).

    z1, z2: (B, D) projections of two views of the same B images on this process. Each of
    the 2B embeddings must pick its partner view among every other embedding of the global
    batch. `gather` maps a local (B, D) tensor to the (W * B, D) concatenation over all W
    processes in rank order, keeping gradients; this process's rows sit at rank * B.
    Returns the mean over this process's 2B rows; DDP's gradient averaging then gives the
    loss of the whole global batch.
    """
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    b = len(z1)
    local = torch.cat([z1, z2])  # (2B, D)
    if gather is None:
        everyone, world = local, 1
    else:
        everyone = torch.cat([gather(z1), gather(z2)])  # (2WB, D): all first views, then all second views
        world = len(everyone) // (2 * b)
    logits = local @ everyone.T / temperature  # (2B, 2WB)
    index = torch.arange(b, device=z1.device) + rank * b
    own = torch.cat([index, index + world * b])  # each row's own column
    partner = torch.cat([index + world * b, index])  # the other view of the same image
    self_pair = torch.zeros_like(logits, dtype=torch.bool)
    self_pair[torch.arange(2 * b, device=z1.device), own] = True
    logits = logits.masked_fill(self_pair, float("-inf"))  # an embedding never counts as its own partner
    return F.cross_entropy(logits, partner)


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015): KL(teacher || student) between distributions softened by `temperature`,
    averaged over the batch and scaled by T², so its gradients keep their size as T changes.

    student_logits, teacher_logits: (B, C). The teacher's side carries no gradient.
    """
    t = temperature
    teacher = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
    student = F.log_softmax(student_logits.float() / t, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * t * t


def hint_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """FitNets (Romero et al., 2015): the mean squared error between the student's features,
    already mapped to the teacher's width by a learned regressor, and the teacher's features."""
    return F.mse_loss(student_features.float(), teacher_features.detach().float())


def clip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor | float, gather: Gather | None = None,
    rank: int = 0,
) -> torch.Tensor:
    """CLIP's symmetric cross entropy (Radford et al., 2021): each image must pick its own
    caption among all captions of the global batch, and each caption its own image.

    image, text: (B, D) L2-normalised embeddings of this process's B pairs (row i of each is
    one pair). `gather` and `rank` as for `nt_xent`: the negatives come from every process,
    with gradients; the mean over this process's rows, averaged over processes by DDP, is the
    loss of the whole global batch (open_clip's local loss with gathered gradients).
    """
    image, text = image.float(), text.float()
    all_image, all_text = (image, text) if gather is None else (gather(image), gather(text))  # (WB, D)
    own = torch.arange(len(image), device=image.device) + rank * len(image)  # each row's partner column
    per_image = logit_scale * image @ all_text.T  # (B, WB): image i against every caption
    per_text = logit_scale * text @ all_image.T  # (B, WB): caption i against every image
    return (F.cross_entropy(per_image, own) + F.cross_entropy(per_text, own)) / 2
