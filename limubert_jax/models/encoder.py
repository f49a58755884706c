"""The LIMU-BERT encoder and its pretraining head (docs/reference.md §2 and §3).

Module and parameter names mirror the reference PyTorch state-dict keys
(`transformer.embed.lin`, `transformer.attn.proj_q`, ... , `decoder`) so that
conversion is a per-tensor transpose, not a renaming table.

Shapes: B batch, S sequence length, F input features, H hidden, FF feed-forward,
NH heads, M masked positions per window.

Performance (the parameters and outputs are those of the plain formulation; see
`encode`): the encoder is written as pure functions of the parameter tree; the Flax modules
only declare the parameters. On CPU the encoder runs over chunks of ENCODER_CHUNK windows, so
that its intermediates stay in cache instead of streaming [B, NH, S, S] attention tensors
through memory (pretraining's train step takes each chunk's gradient in turn, see
`pretraining.steps.loss_and_grads`; elsewhere a loop recomputes each chunk's activations in
the backward pass); the three attention projections run as one matmul; and when only the
masked positions are decoded, the last layer computes only those rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from limubert_jax.models.layers import Linear, dataclass_from_dict, linear, linear_params, matmul
from limubert_jax.runtime.precision import einsum
from limubert_jax.runtime.xla_options import compile_once

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


# The reference variants (`base_v1`, `base_v2` in the original `limu_bert.json`).
MODEL_CONFIGS: dict[str, LimuBertConfig] = {
    "base_v1": LimuBertConfig(feature_num=6),
    "base_v2": LimuBertConfig(feature_num=9),
}


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, as the reference uses; not the tanh approximation."""
    return x * 0.5 * (1.0 + jax.lax.erf(x / math.sqrt(2.0)))


def layer_norm(p, x: jax.Array, eps: float = LAYER_NORM_EPS) -> jax.Array:
    """`LayerNorm` as a function of its parameters {gamma, beta}: x [..., H] -> [..., H]."""
    return _layer_norm(x, p["gamma"], p["beta"], eps)


def layer_norm_reference(x: jax.Array, gamma: jax.Array, beta: jax.Array,
                         eps: float = LAYER_NORM_EPS) -> jax.Array:
    """The reference LayerNorm (eps inside the square root) as plain jnp for autodiff.
    Statistics in float32 whatever x's dtype (bfloat16 compute); the result has x's dtype."""
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    return (gamma * (x32 - mean) / jnp.sqrt(var + eps) + beta).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x, gamma, beta, eps):
    """`layer_norm_reference` with a hand-written backward pass (same values): autodiff
    keeps and re-reads the mean and variance broadcasts; this keeps x_hat and 1/std."""
    return layer_norm_reference(x, gamma, beta, eps)


def _layer_norm_fwd(x, gamma, beta, eps):
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centered = x32 - mean
    std = jnp.sqrt(jnp.mean(jnp.square(centered), axis=-1, keepdims=True) + eps)
    x_hat = centered / std
    return (gamma * x_hat + beta).astype(x.dtype), (x_hat, std, gamma, jnp.zeros((), x.dtype))


def _layer_norm_bwd(eps, residuals, dy):
    x_hat, std, gamma, x_dtype = residuals
    dy = dy.astype(jnp.float32)
    g = dy * gamma
    dx = (g - jnp.mean(g, axis=-1, keepdims=True)
          - x_hat * jnp.mean(g * x_hat, axis=-1, keepdims=True)) / std
    rows = tuple(range(dy.ndim - 1))
    return (dx.astype(x_dtype.dtype), jnp.sum(dy * x_hat, axis=rows).astype(gamma.dtype),
            jnp.sum(dy, axis=rows).astype(gamma.dtype))


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """TF-style LayerNorm: `gamma * (x - mean) / sqrt(var + eps) + beta` over the last axis."""

    eps: float = LAYER_NORM_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        gamma = self.param("gamma", nn.initializers.ones, (width,))
        beta = self.param("beta", nn.initializers.zeros, (width,))
        return layer_norm({"gamma": gamma, "beta": beta}, x, self.eps)


# ---------------------------------------------------------------------------------------
# Parameter declarations: the encoder's parameters under the reference's names, with the
# initialisation of a module-per-layer port. `encode` computes with them.


class _LinearParams(nn.Module):
    features: int

    @nn.compact
    def __call__(self, fan_in: int) -> None:
        linear_params(self, fan_in, self.features)


class _LayerNormParams(nn.Module):
    @nn.compact
    def __call__(self, width: int) -> None:
        self.param("gamma", nn.initializers.ones, (width,))
        self.param("beta", nn.initializers.zeros, (width,))


class Embeddings(nn.Module):
    """Parameters of the input projection `lin`, its LayerNorm `norm` and the learned
    positions `pos_embed` [seq_len, H]."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self, feature_num: int) -> None:
        cfg = self.config
        _LinearParams(cfg.hidden, name="lin")(feature_num)
        _LayerNormParams(name="norm")(cfg.hidden)
        self.param("pos_embed", nn.initializers.normal(stddev=1.0), (cfg.seq_len, cfg.hidden))


class MultiHeadedSelfAttention(nn.Module):
    """Parameters of the q, k, v projections `proj_q`, `proj_k`, `proj_v` (each H -> H)."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self) -> None:
        for name in ("proj_q", "proj_k", "proj_v"):
            _LinearParams(self.config.hidden, name=name)(self.config.hidden)


class PositionWiseFeedForward(nn.Module):
    """Parameters of `fc1` (H -> FF) and `fc2` (FF -> H)."""

    config: LimuBertConfig

    @nn.compact
    def __call__(self) -> None:
        _LinearParams(self.config.hidden_ff, name="fc1")(self.config.hidden)
        _LinearParams(self.config.hidden, name="fc2")(self.config.hidden_ff)


# ---------------------------------------------------------------------------------------
# The encoder as functions of its parameter tree (`params["transformer"]`).


def input_embedding(p, x: jax.Array, cfg: LimuBertConfig) -> jax.Array:
    """docs/reference.md §2 embedding: x [B, S, F] -> [B, S, H]."""
    e = linear(p["lin"], x)
    if cfg.emb_norm:
        e = layer_norm(p["norm"], e)
    e = e + p["pos_embed"][: x.shape[1]]
    # Quirk: the same LayerNorm parameters normalize twice (docs/reference.md §2, step 4).
    return layer_norm(p["norm"], e)


def attention_qkv(p, h: jax.Array, cfg: LimuBertConfig) -> jax.Array:
    """The q, k, v projections as one [H, 3H] matmul (the kernels are concatenated, the
    parameters stay separate): h [B, S, H] -> [B, S, 3H], 1/sqrt(D) folded into q."""
    scale = 1.0 / math.sqrt(cfg.hidden // cfg.n_heads)
    kernel = jnp.concatenate([p["proj_q"]["kernel"] * scale, p["proj_k"]["kernel"], p["proj_v"]["kernel"]], axis=1)
    bias = jnp.concatenate([p["proj_q"]["bias"] * scale, p["proj_k"]["bias"], p["proj_v"]["bias"]])
    return matmul(h, kernel) + bias


def attention(qkv: jax.Array, n_heads: int, positions: jax.Array | None = None) -> jax.Array:
    """Unmasked softmax attention of fused projections qkv [B, S, 3H] (q pre-scaled) ->
    [B, S, H]; with `positions` [B, M], only those query rows: -> [B, M, H]."""
    batch, _, width = qkv.shape
    head_dim = width // (3 * n_heads)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    if positions is not None:
        q = jnp.take_along_axis(q, positions[:, :, None], axis=1)
    # Head-major [B, NH, T, D] operands: XLA:CPU's batched matmuls want the batch dims
    # leading (measured: a seq-major einsum is ~2.5x slower).
    q, k, v = (t.reshape(batch, t.shape[1], n_heads, head_dim).transpose(0, 2, 1, 3) for t in (q, k, v))
    out = softmax_attention(q, k, v)
    return out.transpose(0, 2, 1, 3).reshape(batch, -1, width // 3)


def softmax_attention_reference(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q k^T) v over head-major q [..., T, D], k, v [..., S, D] -> [..., T, D]
    (q pre-scaled), as plain jnp for autodiff."""
    scores = einsum("...qd,...kd->...qk", q, k).astype(jnp.float32)
    weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    return einsum("...qk,...kd->...qd", weights, v)


@jax.custom_vjp
def softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """`softmax_attention_reference` with a hand-written backward pass (same values).

    jax.grad of the plain formulation materializes broadcasts of the softmax statistics and
    computes dk = ds^T q and dv = p^T do as dots that contract the leading dimension of
    their left operand, which XLA:CPU runs through a slow fallback. Here they are computed
    transposed (dk^T = q^T ds, dv^T = do^T p) from explicitly transposed operands.
    """
    return softmax_attention_reference(q, k, v)


def _softmax_attention_fwd(q, k, v):
    # Softmax statistics in float32 whatever the operands' dtype (bfloat16 compute).
    scores = einsum("...qd,...kd->...qk", q, k).astype(jnp.float32)
    e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    weights = (e / jnp.sum(e, axis=-1, keepdims=True)).astype(v.dtype)
    out = einsum("...qk,...kd->...qd", weights, v)
    return out, (q, k, v, weights, out)


def _softmax_attention_bwd(residuals, d_out):
    q, k, v, weights, out = residuals
    f32 = jnp.float32
    d_weights = einsum("...qd,...kd->...qk", d_out, v).astype(f32)
    # Softmax backward: sum_k w dw = sum_d out d_out (a [T, D] instead of a [T, S] reduction).
    row = jnp.sum(d_out.astype(f32) * out.astype(f32), axis=-1, keepdims=True)
    d_scores = (weights.astype(f32) * (d_weights - row)).astype(q.dtype)
    dq = einsum("...qk,...kd->...qd", d_scores, k)
    # The barriers keep XLA from folding the transposes back into the dots.
    q_t, d_out_t = jax.lax.optimization_barrier((jnp.swapaxes(q, -1, -2), jnp.swapaxes(d_out, -1, -2)))
    dk = jnp.swapaxes(einsum("...dq,...qk->...dk", q_t, d_scores), -1, -2)
    dv = jnp.swapaxes(einsum("...dq,...qk->...dk", d_out_t, weights), -1, -2)
    return dq, dk, dv


softmax_attention.defvjp(_softmax_attention_fwd, _softmax_attention_bwd)


def block(p, h: jax.Array, cfg: LimuBertConfig, positions: jax.Array | None = None) -> jax.Array:
    """One application of the shared block (docs/reference.md §2): [B, S, H] -> [B, S, H], or the rows at
    `positions` [B, M] -> [B, M, H] (every step after the attention is per position)."""
    # Quirk: the attention output replaces h; the residual starts after it.
    h = attention(attention_qkv(p["attn"], h, cfg), cfg.n_heads, positions)
    h = layer_norm(p["norm1"], h + linear(p["proj"], h))
    ff = linear(p["pwff"]["fc2"], gelu(linear(p["pwff"]["fc1"], h)))
    return layer_norm(p["norm2"], h + ff)


def encode_plain(p, x: jax.Array, cfg: LimuBertConfig, positions: jax.Array | None = None) -> jax.Array:
    """The encoder on the whole batch at once: x [B, S, F] -> [B, S, H], or the rows at
    `positions` [B, M] -> [B, M, H] (the last layer then computes only those rows)."""
    h = input_embedding(p["embed"], x, cfg)
    for layer in range(cfg.n_layers):
        h = block(p, h, cfg, positions if layer == cfg.n_layers - 1 else None)
    return h


# The CPU encoder's work split (see `encode`), measured on 2 cores with base_v1 and batch
# 128: 16 windows per chunk in 2 streams trains ~1.4x faster than the whole batch at once;
# chunks of 8, 24 or 32 and 1 or 4 streams are 5 to 17% slower than this. In the loop over
# chunks, 2 chunks side by side per iteration run a forward pass 5-7% faster (208 and 512
# windows) than 2 streams inside each chunk, and 8 windows per chunk are no faster.
ENCODER_CHUNK = 16
ENCODER_STREAMS = 2


def default_chunk(cpu_chunk: int = ENCODER_CHUNK) -> int:
    """`cpu_chunk` on the CPU backend, 0 (whole batch) elsewhere."""
    return cpu_chunk if jax.default_backend() == "cpu" else 0


def encode_streams(p, x: jax.Array, cfg: LimuBertConfig, positions: jax.Array | None = None,
                   streams: int = ENCODER_STREAMS) -> jax.Array:
    """`encode_plain` over `streams` interleaved sub-batches (rows i, i + streams, ...), same
    shapes and values. The sub-batches are independent in the graph, so XLA:CPU's runtime can
    run them on different cores instead of splitting every small op between threads. A batch
    that does not divide by `streams` runs whole."""
    batch = x.shape[0]
    if streams <= 1 or batch % streams:
        return encode_plain(p, x, cfg, positions)
    parts = [encode_plain(p, x[i::streams], cfg, None if positions is None else positions[i::streams])
             for i in range(streams)]
    out = jnp.stack(parts, axis=1)  # [B / streams, streams, T, H]: rows back in order
    return out.reshape(batch, *out.shape[2:])


def encode(p, x: jax.Array, cfg: LimuBertConfig, positions: jax.Array | None = None,
           chunk: int | None = None, streams: int = ENCODER_STREAMS) -> jax.Array:
    """`encode_plain` computed over chunks of `chunk` windows (None: `default_chunk()`;
    0: the whole batch at once); same shapes and values.

    On XLA:CPU the whole-batch encoder is bound by memory traffic, not FLOPs: every layer
    writes and re-reads [B, NH, S, S] attention tensors (29 MB each for B = 128) and
    [B, S, FF] activations. Here the chunks run in a loop (`lax.scan`), `streams` chunks side
    by side in each iteration: independent work that XLA:CPU's runtime puts on different
    cores. `jax.checkpoint` keeps only each chunk's input for the backward pass, which
    recomputes the chunk's activations and uses them while they are in cache; the parameter
    gradients are summed over the chunks. A batch of at most `chunk` windows is one chunk
    without the loop, run as `encode_streams`. The batch is zero-padded to a multiple of
    `chunk` and the padding dropped.
    """
    chunk = default_chunk() if chunk is None else chunk
    batch = x.shape[0]
    if chunk <= 0:
        return encode_plain(p, x, cfg, positions)
    if chunk % streams:
        raise ValueError(f"encode: chunk ({chunk}) must divide by streams ({streams})")
    if batch <= chunk:
        return encode_streams(p, x, cfg, positions, streams)
    n = -(-batch // chunk)
    pad = n * chunk - batch

    def split(a):
        if pad:
            a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n, chunk, *a.shape[1:])

    @jax.checkpoint
    def run_chunk(carry, chunk_inputs):
        xc, pc = chunk_inputs
        return carry, encode_plain(p, xc, cfg, pc)

    _, out = jax.lax.scan(run_chunk, None, (split(x), None if positions is None else split(positions)),
                          unroll=streams)
    return out.reshape(n * chunk, *out.shape[2:])[:batch]


def encoder_pieces(seq: int, seq_len: int) -> int:
    """How many pieces the encoder cuts a window of `seq` steps into: 1 when the window fits
    its position table (`seq` <= `seq_len`), `seq // seq_len` pieces of `seq_len` steps when
    `seq` is a multiple of `seq_len` (an encoder shorter than the windows, as LIMU-BERT-X's
    1-second encoder on longer windows, whose release cuts its data the same way); a
    ValueError saying what would fit otherwise."""
    if 1 <= seq <= seq_len:
        return 1
    if seq > seq_len and seq % seq_len == 0:
        return seq // seq_len
    raise ValueError(f"windows of {seq} steps: the encoder takes 1..{seq_len} steps, or a multiple of {seq_len} "
                     f"(encoded in {seq_len}-step pieces)")


def encode_windows(p, x: jax.Array, cfg: LimuBertConfig, chunk: int | None = None) -> jax.Array:
    """The encoder over whole windows x [B, S, F] -> [B, S, H]: `encode` when S <= seq_len;
    a window of S = k x seq_len steps is cut into its k consecutive seq_len-step pieces, each
    encoded on its own (positions 0..seq_len-1), and their outputs put back in order
    (`encoder_pieces`). Every downstream use of the encoder (embeddings, classifiers,
    fine-tuning, the saved pipeline and its exports) computes this."""
    batch, seq, features = x.shape
    k = encoder_pieces(seq, cfg.seq_len)
    h = encode(p, x.reshape(batch * k, seq // k, features), cfg, chunk=chunk)
    return h.reshape(batch, seq, h.shape[-1])


class Transformer(nn.Module):
    """The LIMU-BERT encoder: embeddings, then one shared block applied `n_layers` times.

    It holds the parameters under the reference's names; `encode` computes.
    """

    config: LimuBertConfig

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array | None = None, chunk: int | None = None) -> jax.Array:
        """x: [B, S, F] normalized windows -> representations [B, S, H], or the rows at
        `positions` [B, M] -> [B, M, H]. `chunk`: the work split of `encode` (None: the
        backend's default)."""
        cfg = self.config
        seq = x.shape[1]
        if seq > cfg.seq_len:
            raise ValueError(f"input has {seq} time steps, the model at most seq_len={cfg.seq_len}")
        if self.is_initializing():
            Embeddings(cfg, name="embed")(x.shape[-1])
            MultiHeadedSelfAttention(cfg, name="attn")()
            _LinearParams(cfg.hidden, name="proj")(cfg.hidden)
            _LayerNormParams(name="norm1")(cfg.hidden)
            PositionWiseFeedForward(cfg, name="pwff")()
            _LayerNormParams(name="norm2")(cfg.hidden)
        return encode(self.variables["params"], x, cfg, positions, chunk=chunk)


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

    def __call__(self, x: jax.Array, masked_pos: jax.Array | None = None, chunk: int | None = None) -> jax.Array:
        """Reconstructs inputs.

        x: [B, S, F] (masked) normalized windows; masked_pos: optional int [B, M].
        Returns [B, M, F] at the masked positions, or [B, S, F] when `masked_pos` is None.
        `chunk`: the encoder's work split (`encode`; None: the backend's default).
        """
        # The encoder returns only the rows at masked_pos (= take_along_axis of its full
        # output, computed without the other rows of the last layer).
        return self.decode(self.transformer(x, masked_pos, chunk))

    def encode(self, x: jax.Array) -> jax.Array:
        """x: [B, S, F] normalized windows -> embeddings [B, S, H]; windows of a multiple of
        `seq_len` steps are encoded in `seq_len`-step pieces (`encode_windows`)."""
        return encode_windows(self.transformer.variables["params"], x, self.config)

    def decode(self, h: jax.Array) -> jax.Array:
        """h: [B, T, H] representations -> reconstructions [B, T, F]."""
        h = self.norm(gelu(self.linear(h)))
        return self.decoder(h)

    def init_params(self, rng: jax.Array) -> dict:
        """Initial parameters (the unused `fc` included), as a plain pytree.

        Compiled as one program (eagerly, every parameter's draw compiles on its own: seconds).
        """
        return _init_program(self.config)(rng)


@functools.lru_cache(maxsize=8)
def _init_program(cfg: LimuBertConfig):
    """The initialisation program of `cfg`'s model, kept for later models of the same config."""
    model = LimuBertModel4Pretrain(cfg, parent=None)  # not a child of the module asking

    def init(key):
        dummy = jnp.zeros((1, cfg.seq_len, cfg.feature_num), jnp.float32)
        return model.init(key, dummy, method=_init_all)["params"]

    return compile_once(init)


def _init_all(module: LimuBertModel4Pretrain, x: jax.Array) -> jax.Array:
    """Touches every submodule, `fc` included, so that `init` creates all parameters."""
    h = module.transformer(x)
    return module.decode(h) + module.fc(h).sum() * 0.0


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
