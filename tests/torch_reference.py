"""PyTorch implementations of the reference models, written from docs/reference.md §2, 3 and 7.

They carry the reference's module names, so their state dicts have exactly the released
keys; tests use them to check exports (strict load, same outputs) without the original
code, and benchmarks use them as the PyTorch side (`benchmarks/harness.py`'s
`torch_oracle`). Needs the `torch` extra. It imports torch and the standard library only:
the reference benchmark job runs it without JAX, and an oracle written from docs/reference.md takes
nothing from the code it checks (tests/test_roundtrip.py checks that the constants agree).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # annotations only; any object with these fields does
    from limubert_jax.models.encoder import LimuBertConfig
    from limubert_jax.models.recurrent import GRUClassifierConfig

LAYER_NORM_EPS = 1e-12  # docs/reference.md §2: inside the square root


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact erf GELU."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class LayerNorm(nn.Module):
    """TF-style LayerNorm with `gamma`/`beta` parameters and eps inside the sqrt."""

    def __init__(self, width: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta


class Embeddings(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.lin = nn.Linear(cfg.feature_num, cfg.hidden)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.norm = LayerNorm(cfg.hidden)
        self.emb_norm = cfg.emb_norm

    def forward(self, x):
        seq = x.size(1)
        pos = torch.arange(seq, dtype=torch.long, device=x.device).unsqueeze(0).expand(x.size(0), seq)
        e = self.lin(x)
        if self.emb_norm:
            e = self.norm(e)
        return self.norm(e + self.pos_embed(pos))


class MultiHeadedSelfAttention(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.proj_q = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj_k = nn.Linear(cfg.hidden, cfg.hidden)
        self.proj_v = nn.Linear(cfg.hidden, cfg.hidden)
        self.n_heads = cfg.n_heads

    def forward(self, x):
        b, s, h = x.shape
        d = h // self.n_heads

        def split(t):
            return t.view(b, s, self.n_heads, d).transpose(1, 2)

        q, k, v = split(self.proj_q(x)), split(self.proj_k(x)), split(self.proj_v(x))
        scores = F.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return (scores @ v).transpose(1, 2).contiguous().view(b, s, h)


class PositionWiseFeedForward(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.hidden_ff)
        self.fc2 = nn.Linear(cfg.hidden_ff, cfg.hidden)

    def forward(self, x):
        return self.fc2(gelu(self.fc1(x)))


class Transformer(nn.Module):
    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.embed = Embeddings(cfg)
        self.n_layers = cfg.n_layers
        self.attn = MultiHeadedSelfAttention(cfg)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm1 = LayerNorm(cfg.hidden)
        self.pwff = PositionWiseFeedForward(cfg)
        self.norm2 = LayerNorm(cfg.hidden)

    def forward(self, x):
        h = self.embed(x)
        for _ in range(self.n_layers):
            h = self.attn(h)
            h = self.norm1(h + self.proj(h))
            h = self.norm2(h + self.pwff(h))
        return h


class LIMUBertModel4Pretrain(nn.Module):
    """Encoder plus reconstruction head; `fc` exists and is never used, as in the reference."""

    def __init__(self, cfg: LimuBertConfig):
        super().__init__()
        self.transformer = Transformer(cfg)
        self.fc = nn.Linear(cfg.hidden, cfg.hidden)
        self.linear = nn.Linear(cfg.hidden, cfg.hidden)
        self.norm = LayerNorm(cfg.hidden)
        self.decoder = nn.Linear(cfg.hidden, cfg.feature_num)

    def forward(self, x, masked_pos=None):
        h = self.transformer(x)
        if masked_pos is not None:
            index = masked_pos[:, :, None].expand(-1, -1, h.size(-1))
            h = torch.gather(h, 1, index)
        return self.decoder(self.norm(gelu(self.linear(h))))


class ClassifierGRU(nn.Module):
    """GRU modules `gru<i>`, last time step, dropout, linear layers `lin<i>`."""

    def __init__(self, cfg: GRUClassifierConfig):
        super().__init__()
        width = cfg.input_dim
        for i, (hidden, layers) in enumerate(zip(cfg.rnn_hidden, cfg.rnn_layers)):
            setattr(self, f"gru{i}", nn.GRU(width, hidden, num_layers=layers, batch_first=True))
            width = hidden
        for i, n_out in enumerate(cfg.linear_dims):
            setattr(self, f"lin{i}", nn.Linear(width, n_out))
            width = n_out
        self.cfg = cfg

    def forward(self, x, training: bool = False):
        h = x
        for i in range(len(self.cfg.rnn_hidden)):
            h, _ = getattr(self, f"gru{i}")(h)
            if self.cfg.activation:
                h = F.relu(h)
        h = h[:, -1, :]
        if self.cfg.dropout:
            h = F.dropout(h, p=self.cfg.dropout, training=training)
        for i in range(len(self.cfg.linear_dims)):
            h = getattr(self, f"lin{i}")(h)
            if self.cfg.activation:
                h = F.relu(h)
        return h
