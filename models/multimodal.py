"""CLIP: an image encoder and a text encoder learned together from image-caption pairs."""

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.utilities import dim_zero_cat

from models.contract import IGNORE_INDEX, Batch, field
from models.errors import ConfigError, check_positive
from models.losses import clip_loss
from models.optim import OptimizerCallable, Schedule
from models.task import Task

CHUNK = 1024  # rows of a similarity matrix computed at once when scoring a whole evaluation set


class PairedEmbeddings(Metric):
    """Every (image, caption) embedding pair of an evaluation, from every process, so that
    retrieval ranks each image against the whole set's captions, not one batch's."""

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("image", "text", "caption_id"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(self, image: torch.Tensor, text: torch.Tensor, caption_id: torch.Tensor) -> None:
        self.image.append(image.float())
        self.text.append(text.float())
        self.caption_id.append(caption_id)

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return dim_zero_cat(self.image), dim_zero_cat(self.text), dim_zero_cat(self.caption_id)


def recall_at_k(
    queries: torch.Tensor, keys: torch.Tensor, query_ids: torch.Tensor, key_ids: torch.Tensor, k: int
) -> torch.Tensor:
    """The share of queries (N, D) whose `k` most similar keys (M, D) include a match: a key
    with the query's id (its own pair, or a word-for-word identical caption)."""
    hits = torch.zeros((), device=queries.device)
    for start in range(0, len(queries), CHUNK):
        top = (queries[start : start + CHUNK] @ keys.T).topk(min(k, len(keys)), dim=1).indices  # (c, k)
        hits += (key_ids[top] == query_ids[start : start + CHUNK, None]).any(dim=1).sum()
    return hits / len(queries)


def whole_set_clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """`clip_loss` of all N pairs taken as one batch, N x N similarities a block of rows at a time."""
    total = torch.zeros((), device=image.device)
    for start in range(0, len(image), CHUNK):
        own = torch.arange(start, min(start + CHUNK, len(image)), device=image.device)
        for queries, keys in ((image, text), (text, image)):
            logits = logit_scale * queries[start : start + CHUNK] @ keys.T  # (c, N)
            total += F.cross_entropy(logits, own, reduction="sum")
    return total / (2 * len(image))


class CLIP(Task):
    """Contrastive image-text pretraining (Radford et al., 2021).

    `image_backbone` and `text_backbone` (a `Transformer` with `input: tokens`) are each
    followed by a linear projection to `embed_dim` and L2-normalised. Similarities are
    scaled by a learned logit scale, initialised to 1 / `temperature` and clamped at
    `max_logit_scale` (open_clip's 1/0.07 and 100). Training minimises `losses.clip_loss`
    with the negatives of every process.

    Evaluation scores the whole set at once: `loss` (the CLIP loss of all pairs as one
    batch), retrieval recall@1 and @5 in both directions (`i2t_recall@k`, `t2i_recall@k`),
    and, where the data has class names, zero-shot accuracy (`zeroshot_acc`): each class's
    text embedding is the normalised mean of its prompts' embeddings, and an image takes the
    class it is most similar to. `litlab predict` classifies images that way.
    The image tower (`image_backbone.*` in checkpoints) loads into FineTune like any backbone.
    `compile` compiles both towers, as Classifier compiles its backbone.
    """

    compiled_parts = ("image_backbone", "text_backbone")

    def __init__(
        self,
        image_backbone: nn.Module,
        text_backbone: nn.Module,
        embed_dim: int = 64,
        temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        schedule: Schedule = "cosine",
        warmup_fraction: float | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__(optimizer=optimizer, schedule=schedule, warmup_fraction=warmup_fraction)
        check_positive("CLIP", embed_dim=embed_dim, temperature=temperature, max_logit_scale=max_logit_scale)
        if 1.0 / temperature > max_logit_scale:
            raise ConfigError(
                f"CLIP's initial logit scale 1/temperature = {1 / temperature:.1f} exceeds max_logit_scale "
                f"{max_logit_scale}; raise the temperature or the cap."
            )
        if not isinstance(getattr(text_backbone, "embed", None), nn.Embedding):
            raise ConfigError(
                f"CLIP's text_backbone must read tokens (models.backbones.Transformer with input: tokens); "
                f"got {type(text_backbone).__name__}."
            )
        self.save_hyperparameters(ignore=["image_backbone", "text_backbone", "optimizer"])
        self.image_backbone, self.text_backbone = image_backbone, text_backbone
        self.image_projection = nn.Linear(image_backbone.out_features, embed_dim, bias=False)
        self.text_projection = nn.Linear(text_backbone.out_features, embed_dim, bias=False)
        # A scalar: never decayed (parameter_groups decays matrices and kernels only).
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.max_logit_scale = max_logit_scale
        self.no_decay.update({"text_backbone.embed", "text_backbone.pos"})  # embeddings, as in a language model
        self.pairs = nn.ModuleDict({stage: PairedEmbeddings() for stage in ("val", "test")})
        self.zeroshot = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        self.class_embeddings: torch.Tensor | None = None

    # ---- the two towers ----

    @property
    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_projection(self.image_backbone(images)), dim=-1)  # (B, D)

    def encode_text(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.text_projection(self.text_backbone(tokens, padding_mask=padding_mask)), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode_image(images)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.trainer.datamodule
        caption_len, context = getattr(data, "max_len", None), getattr(self.text_backbone, "max_len", None)
        if caption_len is not None and context is not None and context < caption_len:
            raise ConfigError(
                f"Captions are cut at data.max_len = {caption_len} bytes but the text backbone's max_len is {context}; "
                "raise the text backbone's max_len or lower data.max_len."
            )

    # ---- training ----

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        image = self.encode_image(field(batch, "input", "CLIP"))
        text = self.encode_text(field(batch, "text", "CLIP"), batch.get("text_padding_mask"))
        gather = None
        if self.trainer.world_size > 1:
            # Negatives from every rank, with gradients flowing back to where they came from.
            gather = lambda z: self.all_gather(z, sync_grads=True).flatten(0, 1)  # noqa: E731  (W, B, D) -> (W*B, D)
        scale = self.scale
        loss = clip_loss(image, text, scale, gather, self.global_rank)
        self.log_train({"train/loss": loss, "train/logit_scale": scale.detach()}, batch_size=len(image))
        return loss

    # ---- zero-shot classes ----

    def _encode_classes(self) -> None:
        """Each class's embedding, from the data's prompts, for this evaluation's text tower."""
        data = self.trainer.datamodule
        self.class_embeddings = None
        if getattr(data, "num_classes", None) is None:
            return
        tokens, padding = data.zeroshot_tokens()  # (C, P, L)
        classes, prompts, _ = tokens.shape
        with torch.no_grad():
            text = self.encode_text(tokens.flatten(0, 1).to(self.device), padding.flatten(0, 1).to(self.device))
        self.class_embeddings = F.normalize(text.view(classes, prompts, -1).mean(dim=1), dim=-1)  # (C, D)

    def on_validation_epoch_start(self) -> None:
        self._encode_classes()

    def on_test_epoch_start(self) -> None:
        self._encode_classes()

    def on_predict_epoch_start(self) -> None:
        self._encode_classes()
        if self.class_embeddings is None:
            raise ConfigError("CLIP predicts classes zero-shot and the data has none; give them as data.classes: [...].")

    # ---- evaluation ----

    def evaluate(self, batch: Batch, stage: str) -> None:
        image = self.encode_image(field(batch, "input", "CLIP"))
        text = self.encode_text(field(batch, "text", "CLIP"), batch.get("text_padding_mask"))
        self.pairs[stage].update(image, text, batch["caption_id"])
        if self.class_embeddings is not None:
            y = batch["target"]
            labelled = y != IGNORE_INDEX
            correct = ((image @ self.class_embeddings.T).argmax(dim=1) == y) & labelled
            count = labelled.sum()
            self.zeroshot[stage].update(correct.sum() / count.clamp(min=1), weight=count)

    def log_evaluation(self, stage: str) -> None:
        image, text, ids = self.pairs[stage].compute()  # the whole set, gathered from every process
        ids = ids.reshape(-1)  # torchmetrics returns a set of one pair's (1,) ids squeezed to a scalar
        self.pairs[stage].reset()
        metrics = {f"{stage}/loss": whole_set_clip_loss(image, text, self.scale.detach())}
        for k in (1, 5):
            metrics[f"{stage}/i2t_recall@{k}"] = recall_at_k(image, text, ids, ids, k)
            metrics[f"{stage}/t2i_recall@{k}"] = recall_at_k(text, image, ids, ids, k)
        if self.class_embeddings is not None:
            accuracy = self.zeroshot[stage].compute()
            if not torch.isnan(accuracy):  # NaN: no labelled image in the set
                metrics[f"{stage}/zeroshot_acc"] = accuracy
        self.zeroshot[stage].reset()
        # Already the same on every process (the states were gathered before computing); the
        # mean over processes of equal values changes nothing and tells Lightning they agree.
        self.log_dict(metrics, prog_bar=True, sync_dist=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        image = self.encode_image(field(batch, "input", "CLIP"))
        probs = (self.scale * image @ self.class_embeddings.T).softmax(dim=-1)  # (B, C)
        out = {"pred": probs.argmax(dim=-1), "probs": probs}
        if "target" in batch and getattr(self.trainer.datamodule, "labelled", False):  # new files carry none
            out["target"] = batch["target"]
        return out
