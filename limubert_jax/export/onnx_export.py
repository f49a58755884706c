"""ONNX export of a LIMU-BERT encoder or of a whole trained classifier, for phones and other
runtimes without JAX.

    export_onnx(CKPT_OR_WORKDIR, "encoder.onnx")   # windows [batch, S, F] -> embeddings [batch, S, H]
    export_onnx(RUN_DIR, "classifier.onnx")        # windows [batch, S, F] -> probabilities [batch, C],
                                                   #                          subwindow_logits [batch, K, C]

Both graphs take RAW readings (acc m/s^2, gyro rad/s, mag in any unit), exactly `feature_num`
of them per step, and normalize them inside the graph (docs/reference.md §1), so an app feeds the sensor
values as they come. The batch axis is dynamic (the symbolic dimension "batch"); the
sequence length is the model's.

The graph is written node by node with `onnx.helper` from the NumPy parameters, as the plain
formulation of the JAX code computes (`encoder.encode_plain`, `pipeline.subwindow_logits`):
TF-style LayerNorm is ONNX's `LayerNormalization` (epsilon inside the square root, biased
variance, as docs/reference.md §2), GELU is the erf form, the one shared encoder block is unrolled
`n_layers` times over the same initializers (the file holds its weights once). Recurrent
heads are ONNX `GRU` (`linear_before_reset=1`: PyTorch's n = tanh(W_in x + b_in + r (W_hn h +
b_hn))) and `LSTM` ops, one per layer, with the gates repacked from PyTorch's order (GRU
r, z, n; LSTM i, f, g, o) to ONNX's (z, r, h; i, o, f, c).

The model's `metadata_props` hold what an app needs beside the tensors: `kind`,
`class_names` (JSON list, classifiers), `config` (the checkpoint's config as JSON),
`normalization` (§1's (docs/reference.md) constants, JSON), `inputs` / `outputs` (names and shapes, JSON).

Opset 17 (IR version 8): the first with `LayerNormalization`, and old enough for the ONNX
Runtime builds of mobile apps.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import numpy as np

from limubert_jax.data.normalization import CONSTANTS, GRAVITY, MAG_EPS, MAG_GAMMA, normalize
from limubert_jax.io import checkpoint, storage
from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE, LIMU_BERT
from limubert_jax.models import encoder as encoder_lib
from limubert_jax.models import pipeline, registry
from limubert_jax.models.encoder import LAYER_NORM_EPS, LimuBertConfig
from limubert_jax.models.pipeline import AGGREGATION
from limubert_jax.runtime.errors import LimuBertError, import_extra

OPSET = 17
IR_VERSION = 8
BATCH = "batch"  # the symbolic batch dimension

SUPPORTED_HEADS = registry.RECURRENT_HEADS
ENCODER_KIND = LIMU_BERT
CLASSIFIER_KIND = CLASSIFIER_PIPELINE


def _import_onnx():
    onnx = import_extra("onnx", extra="onnx", reason="ONNX export needs the 'onnx' package, which is not installed")
    from onnx import helper, numpy_helper  # noqa: PLC0415  (parts of the package just imported)

    return onnx, helper, numpy_helper


class _Graph:
    """Collects nodes and initializers; each op helper returns its output's name."""

    def __init__(self, helper, numpy_helper):
        self.helper = helper
        self.numpy_helper = numpy_helper
        self.nodes: list = []
        self.initializers: list = []
        self._names: set[str] = set()
        self._constants: dict[tuple, str] = {}

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            name, i = f"{base}_{i}", i + 1
        self._names.add(name)
        return name

    def tensor(self, name: str, value: np.ndarray) -> str:
        """An initializer named `name` (made unique)."""
        name = self._fresh(name)
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def const(self, value, dtype=np.float32) -> str:
        """A small constant, shared between nodes that use the same value."""
        array = np.asarray(value, dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._constants:
            self._constants[key] = self.tensor("const", array)
        return self._constants[key]

    def op(self, op_type: str, inputs: list[str], n_outputs: int = 1, name: str | None = None, **attrs):
        base = self._fresh(name or op_type.lower())
        outputs = [base] if n_outputs == 1 else [f"{base}_out{i}" for i in range(n_outputs)]
        self._names.update(outputs)
        self.nodes.append(self.helper.make_node(op_type, inputs, outputs, name=base, **attrs))
        return outputs[0] if n_outputs == 1 else outputs

    # Composite layers -------------------------------------------------------------------

    def linear(self, x: str, p: dict, name: str) -> str:
        """x [..., I] @ kernel [I, O] + bias [O]."""
        kernel = self.tensor(f"{name}.kernel", np.asarray(p["kernel"], np.float32))
        bias = self.tensor(f"{name}.bias", np.asarray(p["bias"], np.float32))
        return self.op("Add", [self.op("MatMul", [x, kernel], name=f"{name}.matmul"), bias], name=name)

    def linear_shared(self, x: str, kernel: str, bias: str, name: str) -> str:
        return self.op("Add", [self.op("MatMul", [x, kernel], name=f"{name}.matmul"), bias], name=name)

    def layer_norm(self, x: str, gamma: str, beta: str, name: str) -> str:
        return self.op("LayerNormalization", [x, gamma, beta], name=name, axis=-1, epsilon=LAYER_NORM_EPS)

    def gelu(self, x: str, name: str) -> str:
        """x * 0.5 * (1 + erf(x / sqrt(2)))."""
        erf = self.op("Erf", [self.op("Div", [x, self.const(np.sqrt(2.0))], name=f"{name}.div")], name=f"{name}.erf")
        half = self.op("Mul", [x, self.const(0.5)], name=f"{name}.half")
        return self.op("Mul", [half, self.op("Add", [erf, self.const(1.0)], name=f"{name}.add")], name=name)


def _normalize(g: _Graph, x: str, feature_num: int) -> str:
    """docs/reference.md §1 on raw windows [B, S, F] with F == feature_num (`normalization.normalize`)."""
    if feature_num < 6:
        return x
    # Accelerometer / 9.8, the other columns / 1 (exact): one broadcast Div.
    divisor = np.ones(feature_num, np.float32)
    divisor[:3] = GRAVITY
    if feature_num != 9:
        return g.op("Div", [x, g.const(divisor)], name="normalize.scale")
    head = g.op("Slice", [x, g.const([0], np.int64), g.const([6], np.int64), g.const([-1], np.int64)],
                name="normalize.acc_gyro")
    head = g.op("Div", [head, g.const(divisor[:6])], name="normalize.scale")
    mag = g.op("Slice", [x, g.const([6], np.int64), g.const([9], np.int64), g.const([-1], np.int64)],
               name="normalize.mag")
    square_sum = g.op("ReduceSum", [g.op("Mul", [mag, mag], name="normalize.mag_sq"), g.const([-1], np.int64)],
                      name="normalize.mag_sq_sum", keepdims=1)
    norm = g.op("Add", [g.op("Sqrt", [square_sum], name="normalize.mag_norm"), g.const(MAG_EPS)],
                name="normalize.mag_norm_eps")
    mag = g.op("Mul", [g.op("Div", [mag, norm], name="normalize.mag_unit"), g.const(MAG_GAMMA)],
               name="normalize.mag_scaled")
    return g.op("Concat", [head, mag], name="normalize", axis=-1)


def _encoder(g: _Graph, x: str, p: dict, cfg: LimuBertConfig, seq_len: int) -> str:
    """docs/reference.md §2 on normalized windows [B, S, F] -> [B, S, H] (`encoder.encode_plain`)."""
    if seq_len > cfg.seq_len:
        raise LimuBertError(f"windows of {seq_len} steps are longer than the encoder's seq_len {cfg.seq_len}")
    f32 = np.float32
    emb = p["embed"]
    e_gamma = g.tensor("transformer.embed.norm.gamma", np.asarray(emb["norm"]["gamma"], f32))
    e_beta = g.tensor("transformer.embed.norm.beta", np.asarray(emb["norm"]["beta"], f32))
    h = g.linear(x, emb["lin"], "transformer.embed.lin")
    if cfg.emb_norm:
        h = g.layer_norm(h, e_gamma, e_beta, "transformer.embed.norm_1")
    pos = g.tensor("transformer.embed.pos_embed", np.asarray(emb["pos_embed"], f32)[:seq_len])
    h = g.op("Add", [h, pos], name="transformer.embed.add_pos")
    # Quirk (docs/reference.md §2): the same LayerNorm normalizes twice.
    h = g.layer_norm(h, e_gamma, e_beta, "transformer.embed.norm_2")

    # The one shared block's initializers, used by every layer.
    heads, width = cfg.n_heads, cfg.hidden
    head_dim = width // heads
    scale = 1.0 / np.sqrt(head_dim)
    attn = p["attn"]

    def tensor(name, value):
        return g.tensor(f"transformer.{name}", np.asarray(value, f32))

    # 1/sqrt(head_dim) folded into q, as `encoder.attention_qkv` does.
    q_w = tensor("attn.proj_q.kernel", np.asarray(attn["proj_q"]["kernel"], f32) * f32(scale))
    q_b = tensor("attn.proj_q.bias", np.asarray(attn["proj_q"]["bias"], f32) * f32(scale))
    k_w = tensor("attn.proj_k.kernel", attn["proj_k"]["kernel"])
    k_b = tensor("attn.proj_k.bias", attn["proj_k"]["bias"])
    v_w = tensor("attn.proj_v.kernel", attn["proj_v"]["kernel"])
    v_b = tensor("attn.proj_v.bias", attn["proj_v"]["bias"])
    proj_w, proj_b = tensor("proj.kernel", p["proj"]["kernel"]), tensor("proj.bias", p["proj"]["bias"])
    n1_g, n1_b = tensor("norm1.gamma", p["norm1"]["gamma"]), tensor("norm1.beta", p["norm1"]["beta"])
    fc1_w = tensor("pwff.fc1.kernel", p["pwff"]["fc1"]["kernel"])
    fc1_b = tensor("pwff.fc1.bias", p["pwff"]["fc1"]["bias"])
    fc2_w = tensor("pwff.fc2.kernel", p["pwff"]["fc2"]["kernel"])
    fc2_b = tensor("pwff.fc2.bias", p["pwff"]["fc2"]["bias"])
    n2_g, n2_b = tensor("norm2.gamma", p["norm2"]["gamma"]), tensor("norm2.beta", p["norm2"]["beta"])
    split_shape = g.const([0, 0, heads, head_dim], np.int64)  # [B, S, H] -> [B, S, NH, D]
    merge_shape = g.const([0, 0, width], np.int64)

    for layer in range(cfg.n_layers):
        n = f"layer{layer}"

        def heads_of(t, perm, what, n=n):
            return g.op("Transpose", [g.op("Reshape", [t, split_shape], name=f"{n}.{what}_split")],
                        name=f"{n}.{what}_heads", perm=perm)

        q = heads_of(g.linear_shared(h, q_w, q_b, f"{n}.q"), [0, 2, 1, 3], "q")  # [B, NH, S, D]
        k = heads_of(g.linear_shared(h, k_w, k_b, f"{n}.k"), [0, 2, 3, 1], "k")  # [B, NH, D, S]
        v = heads_of(g.linear_shared(h, v_w, v_b, f"{n}.v"), [0, 2, 1, 3], "v")  # [B, NH, S, D]
        weights = g.op("Softmax", [g.op("MatMul", [q, k], name=f"{n}.scores")], name=f"{n}.softmax", axis=-1)
        a = g.op("Transpose", [g.op("MatMul", [weights, v], name=f"{n}.attend")], name=f"{n}.merge_heads",
                 perm=[0, 2, 1, 3])
        # Quirk (docs/reference.md §2): the attention output replaces h; the residual starts after it.
        h = g.op("Reshape", [a, merge_shape], name=f"{n}.attn_out")
        h = g.layer_norm(g.op("Add", [h, g.linear_shared(h, proj_w, proj_b, f"{n}.proj")], name=f"{n}.residual1"),
                         n1_g, n1_b, f"{n}.norm1")
        ff = g.gelu(g.linear_shared(h, fc1_w, fc1_b, f"{n}.fc1"), f"{n}.gelu")
        ff = g.linear_shared(ff, fc2_w, fc2_b, f"{n}.fc2")
        h = g.layer_norm(g.op("Add", [h, ff], name=f"{n}.residual2"), n2_g, n2_b, f"{n}.norm2")
    return h


def _gate_blocks(array: np.ndarray, order: list[int], gates: int) -> np.ndarray:
    """Reorders the `gates` equal blocks of axis 0."""
    blocks = np.split(array, gates, axis=0)
    return np.concatenate([blocks[i] for i in order], axis=0)


# PyTorch's packed gate blocks -> ONNX's: GRU (r, z, n) -> (z, r, h); LSTM (i, f, g, o) -> (i, o, f, c).
_GATE_ORDER = {"gru": (3, [1, 0, 2]), "lstm": (4, [0, 3, 1, 2])}


def _recurrent_layer(g: _Graph, x: str, p: dict, k: int, cell: str, name: str) -> tuple[str, str]:
    """One PyTorch-style GRU/LSTM layer (`recurrent.RecurrentWeights` layer k) on time-major
    x [T, N, I]: returns (all hidden states [T, N, G], last hidden state [N, G])."""
    gates, order = _GATE_ORDER[cell]
    f32 = np.float32
    kernel_ih = np.asarray(p[f"kernel_ih_l{k}"], f32)  # [I, gates * G]
    kernel_hh = np.asarray(p[f"kernel_hh_l{k}"], f32)  # [G, gates * G]
    hidden = kernel_hh.shape[0]
    w = _gate_blocks(kernel_ih.T, order, gates)[None]  # [1, gates * G, I]
    r = _gate_blocks(kernel_hh.T, order, gates)[None]  # [1, gates * G, G]
    b = np.concatenate([_gate_blocks(np.asarray(p[f"bias_ih_l{k}"], f32), order, gates),
                        _gate_blocks(np.asarray(p[f"bias_hh_l{k}"], f32), order, gates)])[None]
    inputs = [x, g.tensor(f"{name}.W", w), g.tensor(f"{name}.R", r), g.tensor(f"{name}.B", b)]
    attrs = {"hidden_size": hidden, "direction": "forward"}
    if cell == "gru":
        y, y_h = g.op("GRU", inputs, n_outputs=2, name=name, linear_before_reset=1, **attrs)
    else:
        y, y_h, _ = g.op("LSTM", inputs, n_outputs=3, name=name, **attrs)
    axis = g.const([1], np.int64)
    y = g.op("Squeeze", [y, axis], name=f"{name}.states")  # [T, 1, N, G] -> [T, N, G]
    y_h = g.op("Squeeze", [y_h, g.const([0], np.int64)], name=f"{name}.last")  # [1, N, G] -> [N, G]
    return y, y_h


def _recurrent_head(g: _Graph, x: str, p: dict, module) -> str:
    """`recurrent.RecurrentClassifier` in eval mode on sub-windows [N, T, I] -> logits [N, C]."""
    cfg, cell = module.config, module.cell
    h = g.op("Transpose", [x], name="head.time_major", perm=[1, 0, 2])  # [T, N, I]
    last = None
    for i, num_layers in enumerate(cfg.rnn_layers):
        for k in range(num_layers):
            h, last = _recurrent_layer(g, h, p[f"{cell}{i}"], k, cell, f"head.{cell}{i}.l{k}")
        if cfg.activation:  # a ReLU after each module; the last step of relu(h) is relu(last h)
            h = g.op("Relu", [h], name=f"head.{cell}{i}.relu")
            last = g.op("Relu", [last], name=f"head.{cell}{i}.relu_last")
    out = last  # [N, G]; dropout is training only
    for i in range(len(cfg.linear_dims)):
        out = g.linear(out, p[f"lin{i}"], f"head.lin{i}")
        if cfg.activation:
            out = g.op("Relu", [out], name=f"head.lin{i}.relu")
    return out


def _value_info(helper, onnx, name: str, shape: list) -> Any:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def _model(onnx, helper, g: _Graph, inputs: dict, outputs: dict, metadata: dict[str, str], doc: str):
    graph = helper.make_graph(
        g.nodes, "limubert", [_value_info(helper, onnx, n, s) for n, s in inputs.items()],
        [_value_info(helper, onnx, n, s) for n, s in outputs.items()], initializer=g.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="limubert-jax", doc_string=doc)
    model.ir_version = IR_VERSION
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model


def _encoder_model(onnx, helper, numpy_helper, config: LimuBertConfig, params: dict):
    g = _Graph(helper, numpy_helper)
    s, f = config.seq_len, config.feature_num
    x = _normalize(g, "windows", f)
    h = _encoder(g, x, params["transformer"], config, s)
    g.op("Identity", [h], name="embeddings")
    inputs = {"windows": [BATCH, s, f]}
    outputs = {"embeddings": [BATCH, s, config.hidden]}
    metadata = _metadata(ENCODER_KIND, config.to_dict(), inputs, outputs)
    doc = ("LIMU-BERT encoder: raw IMU windows (acc m/s^2, gyro rad/s, mag) -> embeddings; "
           "normalization (docs/reference.md §1) is inside the graph.")
    return _model(onnx, helper, g, inputs, outputs, metadata, doc), inputs, outputs


def _classifier_model(onnx, helper, numpy_helper, config, params: dict):
    g = _Graph(helper, numpy_helper)
    s, f, k, c = config.seq_len, config.feature_num, config.subwindows, config.num_classes
    h = _normalize(g, "windows", f)
    if config.encoder is not None:
        pieces = config.encoder_pieces
        if pieces > 1:  # an encoder shorter than the windows sees each piece apart (`encoder.encode_windows`)
            h = g.op("Reshape", [h, g.const([-1, s // pieces, f], np.int64)], name="encoder_pieces")  # [B * P, L, F]
        # The sub-window cut below reads [B * P, L, H] as [B, S, H]: the pieces are in window order.
        h = _encoder(g, h, params["encoder"]["transformer"], config.encoder, s // pieces)
    sub = g.op("Reshape", [h, g.const([-1, config.merge, config.head_input_dim], np.int64)],
               name="subwindows")  # [B * K, merge, D]
    logits = _recurrent_head(g, sub, params["head"], config.head_module())
    logits = g.op("Reshape", [logits, g.const([-1, k, c], np.int64)], name="subwindow_logits")
    g.op("ReduceMean", [g.op("Softmax", [logits], name="subwindow_probabilities", axis=-1)],
         name="probabilities", axes=[1], keepdims=0)
    inputs = {"windows": [BATCH, s, f]}
    outputs = {"probabilities": [BATCH, c], "subwindow_logits": [BATCH, k, c]}
    metadata = _metadata(CLASSIFIER_KIND, config.to_dict(), inputs, outputs)
    metadata["class_names"] = json.dumps(list(config.class_names))
    metadata["label"] = config.label
    metadata["aggregation"] = AGGREGATION
    doc = (f"LIMU-BERT classifier ({config.method}, {config.label}): raw IMU windows (acc m/s^2, gyro rad/s, mag) "
           f"-> class probabilities (mean softmax over {k} sub-windows of {config.merge} steps); normalization "
           "(docs/reference.md §1) is inside the graph; class names in metadata 'class_names'.")
    return _model(onnx, helper, g, inputs, outputs, metadata, doc), inputs, outputs


def _metadata(kind: str, config: dict, inputs: dict, outputs: dict) -> dict[str, str]:
    return {
        "kind": kind,
        "config": json.dumps(config, sort_keys=True),
        "normalization": json.dumps(CONSTANTS),
        "inputs": json.dumps(inputs),
        "outputs": json.dumps(outputs),
    }


def export_onnx(source: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Any]:
    """Writes the ONNX model of `source` to `out_path`; returns a summary.

    `source`: a LIMU-BERT checkpoint or training workdir (kind "limu_bert": the encoder alone)
    or a classifier run directory or its `model/` (kind "classifier_pipeline": the whole
    classifier). An existing `out_path` is refused unless `overwrite`; the file is written
    atomically. Summary: {"kind", "path", "opset", "inputs": {name: shape}, "outputs": {name:
    shape}, "bytes"} (+ "class_names" for a classifier); "batch" names the dynamic axis.
    """
    directory = checkpoint.resolve_model_dir(source)
    target = storage.check_output_file(out_path, source, directory, overwrite=overwrite)
    onnx, helper, numpy_helper = _import_onnx()
    kind, config = checkpoint.read_model_config(directory)
    if kind not in (ENCODER_KIND, CLASSIFIER_KIND):
        raise LimuBertError(f"{directory}: a '{kind}' checkpoint cannot be exported to ONNX; "
                            f"export a LIMU-BERT checkpoint ({ENCODER_KIND}) or a classifier run ({CLASSIFIER_KIND})")
    if kind == CLASSIFIER_KIND and config.head not in SUPPORTED_HEADS:  # before loading the parameters
        raise LimuBertError(f"ONNX export does not support the classifier head '{config.head}'; "
                            f"supported: {', '.join(SUPPORTED_HEADS)}")
    _, config, params = checkpoint.load_model(directory)
    build = _encoder_model if kind == ENCODER_KIND else _classifier_model
    model, inputs, outputs = build(onnx, helper, numpy_helper, config, params)
    data = model.SerializeToString()
    storage.write_together({target: data}, replace=overwrite)
    summary = {"kind": kind, "path": str(target), "opset": OPSET, "inputs": inputs, "outputs": outputs,
               "bytes": len(data)}
    if kind == CLASSIFIER_KIND:
        summary["class_names"] = list(config.class_names)
    return summary


def _reference_outputs(kind: str, config, params: dict, windows: np.ndarray) -> dict[str, np.ndarray]:
    """The JAX computation the ONNX graph reproduces, on raw windows."""
    windows = jnp.asarray(windows, jnp.float32)
    if kind == ENCODER_KIND:
        x = normalize(windows, config.feature_num)
        return {"embeddings": np.asarray(encoder_lib.encode_plain(params["transformer"], x, config))}
    out = pipeline.predict_batch(params, windows, config=config)
    return {"probabilities": np.asarray(out["probabilities"]), "subwindow_logits": np.asarray(out["subwindow_logits"])}


def run_onnx(out_path: str | os.PathLike, windows: np.ndarray, *, threads: int = 1) -> dict[str, np.ndarray]:
    """Runs an exported model with ONNX Runtime on raw windows [B, S, F]: {output name: array}."""
    ort = import_extra("onnxruntime", extra="onnx",
                       reason="running ONNX models needs 'onnxruntime', which is not installed")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    session = ort.InferenceSession(storage.as_path(out_path).read_bytes(), options,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {"windows": np.asarray(windows, np.float32)})
    return dict(zip(names, values))


def check_onnx(out_path: str | os.PathLike, source: str | os.PathLike, windows: np.ndarray) -> float:
    """The largest absolute difference, over every output, between ONNX Runtime running the
    exported `out_path` and the JAX computation of `source` on raw windows [B, S, F]."""
    kind, config, params = checkpoint.load_model(source)
    expected = _reference_outputs(kind, config, params, windows)
    actual = run_onnx(out_path, windows)
    if set(actual) != set(expected):
        raise LimuBertError(f"{out_path}: outputs {sorted(actual)} differ from the model's {sorted(expected)}")
    return max(float(np.max(np.abs(actual[k] - expected[k]))) for k in expected)
