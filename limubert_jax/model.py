"""The LIMU-BERT encoder and its pretraining head (SPEC sections 2 and 3).

Module and parameter names mirror the reference PyTorch state-dict keys
(`transformer.embed.lin`, `transformer.attn.proj_q`, ... , `decoder`) so that
conversion is a per-tensor transpose, not a renaming table.

Shapes: B batch, S sequence length, F input features, H hidden, FF feed-forward,
NH heads, M masked positions per window.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# TF-style LayerNorm epsilon of the reference, applied inside the square root.
LAYER_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class LimuBertConfig:
    """Hyper-parameters of LIMU-BERT (the reference's `limu_bert.json` fields)."""

    feature_num: int = 6  # F: input channels (6 = acc + gyro, 9 = + magnetometer).
    hidden: int = 72  # H: width of the representation.
    hidden_ff: int = 144  # FF: width of the position-wise feed-forward layer.
    n_layers: int = 4  # R: times the one shared block is applied.
    n_heads: int = 4  # NH: attention heads; H must divide by it.
    seq_len: int = 120  # S_max: rows of the learned position table.
    emb_norm: bool = True  # LayerNorm the input projection before adding positions.

    def __post_init__(self):
        for name in ("feature_num", "hidden", "hidden_ff", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"LimuBertConfig.{name} must be a positive int, got {value!r}")
        if self.hidden % self.n_heads:
            raise ValueError(
                f"LimuBertConfig.hidden ({self.hidden}) must divide by n_heads ({self.n_heads})"
            )

    def to_dict(self) -> dict[str, Any]:
        """The config as a plain dict with the reference's field names."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "LimuBertConfig":
        """Builds a config from reference-style fields; unknown fields are an error."""
        return dataclass_from_dict(cls, fields)


def dataclass_from_dict(cls, fields: dict[str, Any]):
    """`cls(**fields)` for a config dataclass, naming unknown fields instead of a TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**fields)


# The reference variants (`base_v1`, `base_v2` in the original `limu_bert.json`).
MODEL_CONFIGS: dict[str, LimuBertConfig] = {
    "base_v1": LimuBertConfig(feature_num=6),
    "base_v2": LimuBertConfig(feature_num=9),
}


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as the reference uses; not the tanh approximation."""
    return x * 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def _torch_linear_bias_init(fan_in: int):
    """PyTorch's default `nn.Linear` bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """`x @ kernel + bias`, initialised like PyTorch's `nn.Linear` (the reference trains from that).

    kernel: [in, out], the transpose of PyTorch's weight.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's kaiming_uniform(a=sqrt(5)).
        kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        kernel = self.param("kernel", kernel_init, (fan_in, self.features))
        bias = self.param("bias", _torch_linear_bias_init(fan_in), (self.features,))
        return jnp.dot(x, kernel) + bias


class LayerNorm(nn.Module):
    """TF-style LayerNorm: `gamma * (x - mean) / sqrt(var + eps) + beta` over the last axis."""

    eps: float = LAYER_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (width,))
        beta = self.param("beta", nn.initializers.zeros, (width,))
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
        return gamma * (x - mean) / jnp.sqrt(var + self.eps) + beta


class Embeddings(nn.Module):
    """Input projection plus learned positions, with the reference's shared LayerNorm."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, S, F] normalized windows -> [B, S, H]."""
        cfg = self.config
        seq = x.shape[1]
        if seq > cfg.seq_len:
            raise ValueError(f"input has {seq} time steps, the model at most seq_len={cfg.seq_len}")
        norm = LayerNorm(name="norm")
        e = Linear(cfg.hidden, name="lin")(x)
        if cfg.emb_norm:
            e = norm(e)
        pos_table = self.param(
            "pos_embed", nn.initializers.normal(stddev=1.0), (cfg.seq_len, cfg.hidden)
        )
        e = e + pos_table[:seq]
        # Quirk: the same LayerNorm parameters normalize twice (SPEC 2, step 4).
        return norm(e)


class MultiHeadedSelfAttention(nn.Module):
    """Unmasked scaled dot-product self-attention without dropout."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """h: [B, S, H] -> [B, S, H]."""
        cfg = self.config
        batch, seq, _ = h.shape
        head_dim = cfg.hidden // cfg.n_heads

        def heads(name):
            # [B, S, H] -> [B, NH, S, D]: head-major operands keep XLA:CPU's batched
            # matmuls contiguous (PERFORMANCE_NOTES: seq-major einsum is ~2.5x slower).
            y = Linear(cfg.hidden, name=name)(h).reshape(batch, seq, cfg.n_heads, head_dim)
            return y.transpose(0, 2, 1, 3)

        q, k, v = heads("proj_q"), heads("proj_k"), heads("proj_v")
        scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(head_dim)
        weights = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        return out.transpose(0, 2, 1, 3).reshape(batch, seq, cfg.hidden)


class PositionWiseFeedForward(nn.Module):
    """fc2(gelu(fc1(x)))."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        """h: [B, S, H] -> [B, S, H]."""
        h = gelu(Linear(self.config.hidden_ff, name="fc1")(h))
        return Linear(self.config.hidden, name="fc2")(h)


class Transformer(nn.Module):
    """The LIMU-BERT encoder: embeddings, then one shared block applied `n_layers` times."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [B, S, F] normalized windows -> representations [B, S, H]."""
        cfg = self.config
        h = Embeddings(cfg, name="embed")(x)
        attn = MultiHeadedSelfAttention(cfg, name="attn")
        proj = Linear(cfg.hidden, name="proj")
        norm1 = LayerNorm(name="norm1")
        pwff = PositionWiseFeedForward(cfg, name="pwff")
        norm2 = LayerNorm(name="norm2")
        for _ in range(cfg.n_layers):
            # Quirk: the attention output replaces h; the residual starts after it.
            h = attn(h)
            h = norm1(h + proj(h))
            h = norm2(h + pwff(h))
        return h


class LimuBertModel4Pretrain(nn.Module):
    """Encoder plus the reconstruction head used for masked pretraining."""

    config: LimuBertConfig

    def setup(self):
        cfg = self.config
        self.transformer = Transformer(cfg)
        # Quirk: the reference head owns `fc` but never uses it; it exists so that exported
        # weights load strictly into the original code.
        self.fc = Linear(cfg.hidden)
        self.linear = Linear(cfg.hidden)
        self.norm = LayerNorm()
        self.decoder = Linear(cfg.feature_num)

    def __call__(self, x: jax.Array, masked_pos: jax.Array | None = None) -> jax.Array:
        """Reconstructs inputs.

        x: [B, S, F] (masked) normalized windows; masked_pos: optional int [B, M].
        Returns [B, M, F] at the masked positions, or [B, S, F] when `masked_pos` is None.
        """
        h = self.transformer(x)
        if masked_pos is not None:
            h = jnp.take_along_axis(h, masked_pos[:, :, None], axis=1)
        return self.decode(h)

    def encode(self, x: jax.Array) -> jax.Array:
        """x: [B, S, F] normalized windows -> embeddings [B, S, H]."""
        return self.transformer(x)

    def decode(self, h: jax.Array) -> jax.Array:
        """h: [B, T, H] representations -> reconstructions [B, T, F]."""
        h = self.norm(gelu(self.linear(h)))
        return self.decoder(h)

    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameters (the unused `fc` included), as a plain pytree."""
        cfg = self.config
        dummy = jnp.zeros((1, cfg.seq_len, cfg.feature_num), jnp.float32)
        variables = self.init(rng, dummy, method=_init_all)
        return variables["params"]


def _init_all(module: LimuBertModel4Pretrain, x: jax.Array) -> jax.Array:
    """Touches every submodule, `fc` included, so that `init` creates all parameters."""
    h = module.transformer(x)
    return module.decode(h) + module.fc(h).sum() * 0.0


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
