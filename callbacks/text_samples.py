"""Continuations of fixed prompts after every validation: the quickest read of what a language
model has learnt. Printed, and logged to W&B as a table, on rank zero only."""

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger

from datamodules.text import decode, encode


class TextSamples(L.Callback):
    """`prompts` continued by `max_new_tokens` tokens at `temperature` among the `top_k`
    likeliest, with a generator seeded by `seed` each time, so epochs are comparable."""

    def __init__(
        self, prompts: list[str], max_new_tokens: int = 80, temperature: float = 0.8, top_k: int | None = 40,
        seed: int = 0,
    ) -> None:
        self.prompts, self.max_new_tokens = prompts, max_new_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def samples(self, model) -> list[str]:
        return [
            decode(model.generate(encode(prompt), self.max_new_tokens, self.temperature, self.top_k,
                                  generator=torch.Generator().manual_seed(self.seed)))
            for prompt in self.prompts
        ]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Rank zero alone generates: the unwrapped module runs no collective, so the others need not wait.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        rows = [[trainer.current_epoch, prompt, text] for prompt, text in zip(self.prompts, self.samples(pl_module))]
        print("\n".join(f"[epoch {epoch}] {prompt!r} -> {prompt + text!r}" for epoch, prompt, text in rows), flush=True)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_text(key="samples", columns=["epoch", "prompt", "continuation"], data=rows)
