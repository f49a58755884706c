"""LIMU-BERT and the classifiers trained on it, in PyTorch, in one file that needs nothing but
torch: copy it into your project.

    import limubert_torch
    model = limubert_torch.load_pipeline("classifier.pt")   # classifier.json beside it; or a .safetensors
    probabilities = model(windows)                           # raw readings [B, S, F] -> [B, C]
    names = model.predict(windows)                           # the most probable class of each window

`classifier.pt` + `classifier.json` (or `classifier.safetensors`) come from
`limubert-convert to_torch RUN_DIR classifier.pt`, RUN_DIR being a classify, finetune or
baseline run of limubert-jax. The pipeline computes what the run trained:

1. normalization of raw readings (acc m/s^2 columns 0-2, gyro rad/s 3-5, magnetometer 6-8):
   the first `feature_num` columns, acceleration / 9.8, the magnetometer scaled to unit norm
   per step;
2. the LIMU-BERT encoder over the whole window, or over each of its seq_len-step pieces for
   an encoder shorter than the windows (absent for baselines on raw readings);
3. the window cut into `merge`-step sub-windows, each classified by the head (GRU or LSTM
   stacks, the last step, linear layers);
4. a window's probabilities: the mean of its sub-windows' softmax.

`LIMUBertModel4Pretrain` has the original release's module names, so a pretrained state
dict exported by `limubert-convert to_torch CKPT bert.pt` loads with `strict=True`
(`LIMUBertModel4Pretrain(**json.load(open("bert.json")))`). Shapes: B windows, S steps, F
features, H hidden, K = S // merge sub-windows, C classes.
"""

from __future__ import annotations

import json
import math
import os
import struct

import torch
from torch import nn

FORMAT = "limubert_jax.classifier_pipeline"
FORMAT_VERSION = 1
SAFETENSORS_CONFIG_KEY = "limubert_jax_config"  # the config JSON in a .safetensors file's metadata
LAYER_NORM_EPS = 1e-12  # TF-style: inside the square root
RECURRENT_HEADS = {"gru_v1": "gru", "gru_v2": "gru", "rgru": "gru", "lstm_v1": "lstm"}


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class LayerNorm(nn.Module):
    """TF-style LayerNorm: gamma * (x - mean) / sqrt(var + eps) + beta, biased variance."""

    def __init__(self, width: int, eps: float = LAYER_NORM_EPS):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(width))
        self.beta = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.gamma * (x - mean) / torch.sqrt(var + self.eps) + self.beta


class Embeddings(nn.Module):
    def __init__(self, feature_num: int, hidden: int, seq_len: int, emb_norm: bool):
        super().__init__()
        self.lin = nn.Linear(feature_num, hidden)
        self.pos_embed = nn.Embedding(seq_len, hidden)
        self.norm = LayerNorm(hidden)
        self.emb_norm = emb_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.lin(x)
        if self.emb_norm:
            e = self.norm(e)
        e = e + self.pos_embed.weight[: x.shape[1]]
        return self.norm(e)  # the same LayerNorm again (a quirk of the original)


class MultiHeadedSelfAttention(nn.Module):
    def __init__(self, hidden: int, n_heads: int):
        super().__init__()
        self.proj_q, self.proj_k, self.proj_v = (nn.Linear(hidden, hidden) for _ in range(3))
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        d = h // self.n_heads

        def heads(t):  # [B, S, H] -> [B, NH, S, D]
            return t.reshape(b, s, self.n_heads, d).transpose(1, 2)

        q, k, v = heads(self.proj_q(x)), heads(self.proj_k(x)), heads(self.proj_v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d), dim=-1)
        return (weights @ v).transpose(1, 2).reshape(b, s, h)


class PositionWiseFeedForward(nn.Module):
    def __init__(self, hidden: int, hidden_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, hidden_ff)
        self.fc2 = nn.Linear(hidden_ff, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(gelu(self.fc1(x)))


class Transformer(nn.Module):
    """The encoder: normalized windows [B, S, F] -> embeddings [B, S, H]; one block's
    parameters applied `n_layers` times."""

    def __init__(self, feature_num: int = 6, hidden: int = 72, hidden_ff: int = 144, n_layers: int = 4,
                 n_heads: int = 4, seq_len: int = 120, emb_norm: bool = True):
        super().__init__()
        self.embed = Embeddings(feature_num, hidden, seq_len, emb_norm)
        self.attn = MultiHeadedSelfAttention(hidden, n_heads)
        self.proj = nn.Linear(hidden, hidden)
        self.norm1 = LayerNorm(hidden)
        self.pwff = PositionWiseFeedForward(hidden, hidden_ff)
        self.norm2 = LayerNorm(hidden)
        self.n_layers = n_layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for _ in range(self.n_layers):
            h = self.attn(h)  # the attention output replaces h (a quirk of the original)
            h = self.norm1(h + self.proj(h))
            h = self.norm2(h + self.pwff(h))
        return h


class LIMUBertModel4Pretrain(nn.Module):
    """Encoder and reconstruction head with the original release's names (`fc` is unused there
    too; it exists so that state dicts load strictly)."""

    def __init__(self, feature_num: int = 6, hidden: int = 72, hidden_ff: int = 144, n_layers: int = 4,
                 n_heads: int = 4, seq_len: int = 120, emb_norm: bool = True):
        super().__init__()
        self.transformer = Transformer(feature_num, hidden, hidden_ff, n_layers, n_heads, seq_len, emb_norm)
        self.fc = nn.Linear(hidden, hidden)
        self.linear = nn.Linear(hidden, hidden)
        self.norm = LayerNorm(hidden)
        self.decoder = nn.Linear(hidden, feature_num)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized windows [B, S, F] -> embeddings [B, S, H]."""
        return self.transformer(x)

    def forward(self, x: torch.Tensor, masked_pos: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstructions [B, S, F], or [B, M, F] at `masked_pos` [B, M]."""
        h = self.transformer(x)
        if masked_pos is not None:
            h = torch.gather(h, 1, masked_pos[:, :, None].expand(-1, -1, h.shape[-1]))
        return self.decoder(self.norm(gelu(self.linear(h))))


class Encoder(nn.Module):
    """The pipeline's encoder: raw-window embeddings through `transformer` (keys `transformer.*`)."""

    def __init__(self, **config):
        super().__init__()
        self.transformer = Transformer(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transformer(x)


class RecurrentClassifier(nn.Module):
    """The original `ClassifierGRU` (cell "gru", modules `gru<i>`) or `ClassifierLSTM` ("lstm",
    `lstm<i>`): stacked recurrent modules, the last step, linear layers `lin<i>`; sub-windows
    [N, T, I] -> logits [N, C]. Dropout acts in training only, so inference has none."""

    def __init__(self, input_dim: int, rnn_hidden, rnn_layers, linear_dims, activation: bool = False,
                 cell: str = "gru", **_):
        super().__init__()
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
        width = input_dim
        self.cell = cell
        for i, (hidden, layers) in enumerate(zip(rnn_hidden, rnn_layers)):
            setattr(self, f"{cell}{i}", rnn(width, hidden, num_layers=layers, batch_first=True))
            width = hidden
        for i, out in enumerate(linear_dims):
            setattr(self, f"lin{i}", nn.Linear(width, out))
            width = out
        self.num_rnn, self.num_linear, self.activation = len(rnn_hidden), len(linear_dims), activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i in range(self.num_rnn):
            h, _ = getattr(self, f"{self.cell}{i}")(h)
            if self.activation:
                h = torch.relu(h)
        h = h[:, -1, :]
        for i in range(self.num_linear):
            h = getattr(self, f"lin{i}")(h)
            if self.activation:
                h = torch.relu(h)
        return h


def normalize(x: torch.Tensor, feature_num: int, gravity: float = 9.8, mag_gamma: float = 1.0,
              mag_eps: float = 1e-5) -> torch.Tensor:
    """Raw readings [..., S, F >= feature_num] -> the model's input [..., S, feature_num]."""
    x = x[..., :feature_num]
    if feature_num < 6:
        return x
    parts = [x[..., :3] / gravity, x[..., 3:6]]
    if feature_num == 9:
        mag = x[..., 6:9]
        parts.append(mag / (torch.sqrt((mag * mag).sum(-1, keepdim=True)) + mag_eps) * mag_gamma)
    return torch.cat(parts, dim=-1)


class ClassifierPipeline(nn.Module):
    """A trained classifier from raw readings to class probabilities (see the module docstring),
    built from its config (the `.json` that `limubert-convert to_torch` writes)."""

    def __init__(self, config: dict):
        super().__init__()
        if config.get("format") != FORMAT or config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(f"not a limubert-jax classifier config (format {config.get('format')!r}, "
                             f"version {config.get('format_version')!r}; this file reads {FORMAT} {FORMAT_VERSION})")
        head = config["head"]
        if head not in RECURRENT_HEADS:
            raise ValueError(f"head {head!r} has no PyTorch version here; supported: {', '.join(RECURRENT_HEADS)}")
        self.config = config
        self.class_names = list(config["class_names"])
        self.seq_len, self.merge, self.feature_num = config["seq_len"], config["merge"], config["feature_num"]
        self.norm_constants = config["normalization"]
        if config.get("encoder") is not None:
            self.encoder = Encoder(**config["encoder"])
        else:
            self.encoder = None
        self.head = RecurrentClassifier(**config["head_config"], cell=RECURRENT_HEADS[head])

    def subwindow_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw windows [B, S, F] -> logits [B, K, C] of each sub-window."""
        if x.ndim != 3 or x.shape[1] != self.seq_len or x.shape[2] < self.feature_num:
            raise ValueError(f"expected raw windows (B, {self.seq_len}, {self.feature_num}+), got {tuple(x.shape)}")
        b = x.shape[0]
        h = normalize(x.float(), self.feature_num, **self.norm_constants)
        if self.encoder is not None:
            piece = min(self.seq_len, self.config["encoder"]["seq_len"])  # each piece encoded apart
            # Concrete sizes, no -1: TFLite's converter traces this with a fixed batch and
            # refuses a reshape it cannot size.
            h = self.encoder(h.reshape(b * (self.seq_len // piece), piece, h.shape[-1]))
            h = h.reshape(b, self.seq_len, h.shape[-1])
        k = self.seq_len // self.merge
        logits = self.head(h.reshape(b * k, self.merge, h.shape[-1]))
        return logits.reshape(b, k, logits.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Raw windows [B, S, F] -> window probabilities [B, C]: the mean of the sub-windows' softmax."""
        return torch.softmax(self.subwindow_logits(x), dim=-1).mean(dim=1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> list[str]:
        """The most probable class name of each window."""
        return [self.class_names[i] for i in self(x).argmax(-1).tolist()]


_SAFETENSORS_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the string metadata of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f"{path}: not a safetensors file (too short)")
    (size,) = struct.unpack("<Q", data[:8])
    if 8 + size > len(data):
        raise ValueError(f"{path}: not a safetensors file (header of {size} bytes past the end)")
    header = json.loads(data[8 : 8 + size])
    metadata = header.pop("__metadata__", {}) or {}
    body = memoryview(data)[8 + size :]
    tensors = {}
    for name, entry in header.items():
        start, end = entry["data_offsets"]
        if entry["dtype"] not in _SAFETENSORS_DTYPES or not 0 <= start <= end <= len(body):
            raise ValueError(f"{path}: not a safetensors file this reads (entry {name!r}: {entry})")
        dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
        if start == end:  # torch.frombuffer refuses an empty buffer
            tensors[name] = torch.zeros(entry["shape"], dtype=dtype)
        else:
            tensors[name] = torch.frombuffer(bytearray(body[start:end]), dtype=dtype).reshape(entry["shape"])
    return tensors, metadata


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, config) of `X.pt` (config in `X.json` beside it) or `X.safetensors`
    (config in its metadata)."""
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        tensors, metadata = read_safetensors(path)
        if SAFETENSORS_CONFIG_KEY not in metadata:
            raise ValueError(f"{path}: no '{SAFETENSORS_CONFIG_KEY}' in its metadata (not written by limubert-jax)")
        return tensors, json.loads(metadata[SAFETENSORS_CONFIG_KEY])
    sidecar = os.path.splitext(path)[0] + ".json"
    with open(sidecar) as f:
        config = json.load(f)
    return torch.load(path, map_location="cpu", weights_only=True), config


def load_pipeline(path: str | os.PathLike) -> ClassifierPipeline:
    """The classifier of `X.pt` + `X.json`, or of `X.safetensors`, ready in eval mode."""
    state, config = load_state(path)
    model = ClassifierPipeline(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
