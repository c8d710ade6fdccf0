"""LanguageModel: a token Transformer trained on text, causal (GPT) or masked (BERT)."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from lightning.pytorch.loggers import WandbLogger
from torchmetrics import MeanMetric

from models.contract import IGNORE_INDEX, Batch, Objective, field
from models.run_state import derived_seed, run_seed
from models.tokenizer import BYTES, load_tokenizer
from models.errors import ConfigError, check_positive
from models.lora import LoRA, check_trainable
from models.optim import OptimizerCallable, Schedule
from models.task import Task


class LanguageModel(LoRA, Task):
    """The backbone (a `Transformer` with `input: tokens`) and a language-model head whose
    weights are the token embedding's (weight tying, as GPT-2 and nanoGPT do).

    `causal`: the backbone must be causal; each position predicts the next token.
    `masked`: the backbone must not be; the loss is scored only where the data corrupted
    the input (target not IGNORE_INDEX). Losses are in nats per scored token; `val/bpb` is
    the loss in bits per byte of text (times the data's `tokens_per_byte` where its tokens are not
    bytes, so runs with different tokenizers compare) and `val/ppl` its perplexity per token.
    `tokenizer` (linked from the data) turns prompts into tokens and samples back into text.
    `compile` wraps the backbone in `torch.compile`. A causal model continues `sample_prompts`
    after every validation (`on_validation_end`), and `litlab predict` continues its prompts, each
    by `max_new_tokens` new tokens drawn at `temperature` from the `top_k` likeliest (none: from
    all; temperature 0: always the likeliest).

    `checkpoint` (a file, run folder or LoRA checkpoint, as FineTune reads them) fills the backbone
    with pretrained weights, for continued pretraining or instruction tuning. `mode: lora` trains
    low-rank adapters alone (models/lora.py; `lora_rank`, `lora_alpha`, `lora_dropout` and
    `lora_targets` as FineTune's): the backbone and its language-model head, tied to the
    embedding or the model's own, stay frozen.
    """

    def __init__(
        self,
        backbone: nn.Module,
        objective: Objective = "causal",
        optimizer: OptimizerCallable = torch.optim.AdamW,
        schedule: Schedule = "cosine",
        warmup_fraction: float | None = None,
        compile: bool = False,
        sample_prompts: list[str] | None = None,
        max_new_tokens: int = 80,
        temperature: float = 0.8,
        top_k: int | None = 40,
        tokenizer: str = BYTES,
        checkpoint: str | None = None,
        mode: Literal["full", "lora"] = "full",
        lora_rank: int = 8,
        lora_alpha: float = 16.0,
        lora_dropout: float = 0.0,
        lora_targets: str | list[str] | None = None,
    ) -> None:
        super().__init__(optimizer=optimizer, schedule=schedule, warmup_fraction=warmup_fraction)
        # A backbone with a language-modelling head of its own (a Hugging Face model loaded with
        # lm_head) gives the logits itself; litlab's Transformer gets a head tied to its embedding.
        own_head = getattr(backbone, "lm_head", None) is not None and hasattr(backbone, "forward_logits")
        embed = getattr(backbone, "embed", None)
        if not own_head and not isinstance(embed, nn.Embedding):
            raise ConfigError(
                f"LanguageModel needs a token backbone (models.backbones.Transformer with input: tokens, or "
                f"models.backbones.HuggingFace with lm_head: causal or masked); got {type(backbone).__name__}."
            )
        if objective not in ("causal", "masked"):
            raise ConfigError(f"objective must be 'causal' or 'masked'; got {objective!r}.")
        if (objective == "causal") != bool(getattr(backbone, "causal", False)):
            need = "causal: true" if objective == "causal" else "causal: false"
            where = f"lm_head: {objective}" if own_head else need
            raise ConfigError(f"objective {objective} needs a backbone with {where}; set it on the backbone.")
        self.save_hyperparameters(ignore=["backbone", "optimizer"])
        self.backbone = backbone
        if own_head:
            self.head = nn.Identity()
            features = backbone.forward_logits
            # The model's own head (tied to its embedding, or not) writes the logits: AdamW's under Muon.
            head = backbone.model.get_output_embeddings()
            self.output_parts.update(f"backbone.{name}" for name, part in backbone.named_modules() if part is head)
        else:
            self.head = nn.Linear(embed.embedding_dim, embed.num_embeddings, bias=False)
            self.head.weight = embed.weight  # tied: one matrix reads tokens in and writes them out
            self.no_decay.update({"backbone.embed", "backbone.pos"})  # embeddings, as GPT-2 and nanoGPT do
            features = backbone.forward_features
        self.objective = objective
        self.features = torch.compile(features) if compile else features
        self.eval_loss = nn.ModuleDict({stage: MeanMetric() for stage in ("val", "test")})
        if sample_prompts and objective != "causal":
            raise ConfigError("sample_prompts needs a causal model; a masked model does not continue text.")
        check_positive("LanguageModel", max_new_tokens=max_new_tokens)
        if temperature < 0 or (top_k is not None and top_k < 1):
            raise ConfigError(f"temperature must be 0 or more and top_k at least 1 (or null for every token); got "
                              f"temperature={temperature}, top_k={top_k}.")
        self.sample_prompts, self.max_new_tokens = sample_prompts or [], max_new_tokens
        self.temperature, self.top_k = temperature, top_k
        self.tokenizer = load_tokenizer(tokenizer)
        check_trainable(backbone, mode)
        base = self.load_pretrained(checkpoint) if checkpoint is not None else None
        if mode == "lora":
            # The head is the base's too: the embedding's transpose, or the model's own.
            self.add_lora(lora_rank, lora_alpha, lora_dropout, lora_targets, base, frozen_parts=("head",))
        elif mode != "full":
            raise ConfigError(f"LanguageModel mode must be 'full' or 'lora'; got {mode!r}.")

    def on_validation_end(self) -> None:
        """The quickest read of what the model has learnt: each of `sample_prompts` continued by
        `max_new_tokens` tokens (at `temperature`, from the `top_k` likeliest), from the same seed every
        epoch so epochs compare; printed, and logged to W&B as a table. Rank zero alone
        generates: the unwrapped module runs no collective, so the others need not wait."""
        trainer = self.trainer
        if not self.sample_prompts or trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = []
        for prompt in self.sample_prompts:
            tokens = self.generate(self.tokenizer.encode(prompt), self.max_new_tokens, self.temperature, self.top_k,
                                   generator=torch.Generator().manual_seed(0))
            rows.append([trainer.current_epoch, prompt, self.tokenizer.decode(tokens)])
        print("\n".join(f"[epoch {epoch}] {prompt!r} -> {prompt + text!r}" for epoch, prompt, text in rows), flush=True)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["epoch", "prompt", "continuation"], data=rows)

    def forward(self, tokens: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) for every position of `tokens` (B, T)."""
        return self.head(self.features(tokens, padding_mask))

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over the scored positions, their count)."""
        tokens = field(batch, "input", type(self).__name__)
        # A causal model never looks ahead, so right padding needs no mask; a masked one must not attend to it.
        mask = batch.get("padding_mask") if self.objective == "masked" else None
        logits = self(tokens, mask)  # (B, T, V)
        target = batch["target"]
        count = (target != IGNORE_INDEX).sum()
        total = F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        return total / count.clamp(min=1), count

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, _ = self.loss(batch)
        self.log_train({"train/loss": loss}, batch_size=len(batch["target"]))
        return loss

    def evaluate(self, batch: Batch, stage: str) -> None:
        loss, count = self.loss(batch)
        self.eval_loss[stage].update(loss, weight=count)  # a mean over tokens, exact across batches and ranks

    def log_evaluation(self, stage: str) -> None:
        loss = self.eval_loss[stage].compute()
        self.eval_loss[stage].reset()
        self.log(f"{stage}/loss", loss, prog_bar=True)
        # Nats per token to bits per byte: times the tokens per byte of the split (1 with bytes).
        datamodule = getattr(self.trainer, "datamodule", None)
        ratio = getattr(datamodule, "tokens_per_byte", {}).get(stage, 1.0)
        self.log(f"{stage}/bpb", loss * ratio / math.log(2), prog_bar=True)
        self.log(f"{stage}/ppl", loss.exp())

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, str]:
        """The continuation of one prompt, sampled as `max_new_tokens` tokens with a seed of its own."""
        generator = torch.Generator().manual_seed(derived_seed(run_seed(), batch_idx))
        tokens = self.generate(batch["input"], self.max_new_tokens, self.temperature, self.top_k, generator=generator)
        return {"prompt": batch["prompt"], "continuation": self.tokenizer.decode(tokens)}

    @torch.no_grad()
    def generate(
        self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Continue `prompt` (T,) token by token; temperature 0 picks the likeliest token."""
        if self.objective != "causal":
            raise ConfigError("generate needs a causal model; a masked model fills in blanks instead.")
        was_training = self.training
        self.eval()
        tokens = prompt.to(self.device)[None]  # (1, T)
        for _ in range(max_new_tokens):
            context = tokens[:, -self.backbone.max_len :]  # the longest context the positions allow
            logits = self(context)[0, -1].float()  # (V,)
            if temperature == 0:
                nxt = logits.argmax()[None]
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, len(logits))).values[-1]
                    logits[logits < kth] = -float("inf")
                probs = logits.softmax(dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=generator).to(tokens.device)
            tokens = torch.cat([tokens, nxt[None]], dim=1)
        self.train(was_training)
        return tokens[0, len(prompt) :]
