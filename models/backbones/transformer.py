"""Pre-LayerNorm Transformer encoder for feature sequences, image patches or token ids."""

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin

from models.backbones.activations import Activation, make_activation
from models.backbones.registry import register
from models.errors import ConfigError, check_fraction, check_positive

Input = Literal["sequence", "image", "tokens"]
Pool = Literal["mean", "cls", "last"]


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float, causal: bool) -> None:
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.drop = nn.Dropout(dropout)
        self.heads = heads
        self.dropout = dropout
        self.causal = causal

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        """`attend`: (B, 1, T, T) or (B, 1, 1, T) booleans, True where a query may look at a key;
        it already holds the causal mask when there is one."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attend,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=self.causal and attend is None,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.drop(self.proj(y))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float, activation: Activation) -> None:
        super().__init__()
        self.fc = nn.Linear(d_model, hidden)
        self.act = make_activation(activation)
        self.proj = nn.Linear(hidden, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    def __init__(
        self, d_model: int, heads: int, mlp_ratio: float, dropout: float, causal: bool, activation: Activation
    ) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, heads, dropout, causal)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = FeedForward(d_model, int(mlp_ratio * d_model), dropout, activation)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), attend)
        return x + self.mlp(self.ln2(x))


@register(
    image={"input": "image"},
    sequence=[
        {"input": "sequence"},
        {"input": "sequence", "pool": "cls"},
        {"input": "sequence", "causal": True, "pool": "last"},
    ],
    tokens={"input": "tokens", "vocab_size": 50},
)
class Transformer(nn.Module):
    """Embed, add learned positions, `depth` pre-LN blocks, final LayerNorm, then pool.

    `forward_features` gives every position, (B, T, d_model) (with the cls token first when
    pool='cls'); `forward` pools them to (B, d_model). Both take an optional `padding_mask`
    (B, T), True at padding: padded keys are never attended to, and pooling skips them.
    """

    def __init__(
        self,
        input: Input = "sequence",
        d_model: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        max_len: int = 512,
        patch_size: int = 4,
        vocab_size: int | None = None,
        causal: bool = False,
        pool: Pool = "mean",
        activation: Activation = "gelu",
    ) -> None:
        super().__init__()
        check_positive(
            "Transformer", d_model=d_model, depth=depth, heads=heads, mlp_ratio=mlp_ratio, max_len=max_len,
            patch_size=patch_size,
        )
        check_fraction("Transformer", dropout=dropout)
        if d_model % heads:
            raise ConfigError(f"Transformer d_model ({d_model}) must be divisible by heads ({heads}).")
        if input == "tokens" and vocab_size is None:
            raise ConfigError("Transformer input='tokens' needs vocab_size; set it to the tokenizer's vocabulary size.")
        if causal and pool == "cls":
            raise ConfigError("A causal Transformer's cls token (first) would see only itself; use pool='last' instead.")
        if input == "tokens":
            self.embed = nn.Embedding(vocab_size, d_model)
        elif input == "image":
            self.embed = nn.LazyConv2d(d_model, patch_size, stride=patch_size)
        else:
            self.embed = nn.LazyLinear(d_model)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pool == "cls" else None
        self.pos = nn.Embedding(max_len + 1 if pool == "cls" else max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout, causal, activation) for _ in range(depth))
        self.ln_f = nn.LayerNorm(d_model)
        self.input = input
        self.patch_size = patch_size
        self.max_len = max_len
        self.pool = pool
        self.causal = causal
        self.out_features = d_model
        self.apply(_init_weights)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)
        # GPT-2: scale residual projections by 1/sqrt(2 * depth) so the residual stream's
        # variance does not grow with depth (two residual additions per block).
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * depth))

    def forward_features(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.input == "image" and (x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size):
            # A strided conv would silently drop the edge pixels.
            raise ConfigError(
                f"Transformer got {x.shape[-2]}x{x.shape[-1]} images, not divisible by patch_size "
                f"{self.patch_size}; choose a patch_size that divides both sides."
            )
        x = self.embed(x)  # (B, T, C); an image gives (B, C, H/p, W/p)
        if self.input == "image":
            x = x.flatten(2).transpose(1, 2)  # (B, N, C), one token per patch
        B, T, _ = x.shape
        if T > self.max_len:
            raise ConfigError(
                f"Transformer input has {T} positions (tokens or patches) but max_len is {self.max_len}; "
                "raise max_len or shorten the input."
            )
        if self.cls is not None:
            x = torch.cat([self.cls.expand(B, -1, -1), x], dim=1)  # (B, 1 + T, C)
            if padding_mask is not None:
                padding_mask = F.pad(padding_mask, (1, 0), value=False)  # the cls token is never padding
        x = self.drop(x + self.pos(torch.arange(x.shape[1], device=x.device)))
        attend = None
        if padding_mask is not None:
            n = x.shape[1]
            attend = ~padding_mask[:, None, None, :]  # (B, 1, 1, T'): every query may see every real key
            if self.causal:
                attend = attend & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # (B, 1, T', T')
            # A padding query with no real key to see would give NaN; it sees itself instead.
            attend = attend | torch.eye(n, dtype=torch.bool, device=x.device)
        for block in self.blocks:
            x = block(x, attend)
        return self.ln_f(x)  # (B, T', C)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.forward_features(x, padding_mask)  # (B, T', C)
        if self.pool == "cls":
            return x[:, 0]
        if padding_mask is None:
            return x.mean(dim=1) if self.pool == "mean" else x[:, -1]
        keep = (~padding_mask).to(x.dtype).unsqueeze(-1)  # (B, T, 1)
        if self.pool == "mean":
            return (x * keep).sum(dim=1) / keep.sum(dim=1).clamp(min=1)  # (B, C)
        last = keep.squeeze(-1).cumsum(dim=1).argmax(dim=1)  # (B,): the last real position
        return x[torch.arange(len(x), device=x.device), last]


def _init_weights(module: nn.Module) -> None:
    # Lazy layers have no weights yet; they get torch's defaults when materialised.
    if isinstance(module, LazyModuleMixin):
        return
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)
