"""TFLite (LiteRT) export of a whole trained classifier, for Android/iOS/microcontroller apps
that run TensorFlow Lite, through the self-contained PyTorch pipeline and `litert-torch`.

    export_tflite(RUN_DIR, "classifier.tflite")            # windows [1, S, F] -> probabilities [1, C],
                                                            #                      subwindow_logits [1, K, C]
    export_tflite(RUN_DIR, "classifier.tflite", batch=8)   # windows [8, S, F] -> ...
    run_tflite("classifier.tflite", windows)               # any number N of windows [N, S, F]

The file takes RAW readings (acc m/s^2, gyro rad/s, mag in any unit), exactly `feature_num`
of them per step, and normalizes them inside (docs/reference.md §1), as the ONNX export does; then the
encoder over the whole window, the `merge`-step sub-windows, the head, and the window's
probabilities, the mean of its sub-windows' class probabilities (`pipeline.AGGREGATION`).
Its one signature ("serving_default") has the input `windows` and the outputs
`probabilities` and `subwindow_logits`; every op is a TFLite builtin (no Flex/TensorFlow ops).

THE BATCH IS FIXED. The input shape is [batch, seq_len, feature_num] with `batch` chosen at
export (default 1: an app classifies one window at a time). litert-torch 0.10 cannot lower
a symbolic batch through this model: with `dynamic_shapes={0: Dim("batch")}` every reshape
that merges the batch with another axis fails, and torch's own decompositions make such
reshapes (a `Linear` on [B, S, F] becomes [B*S, F] @ W), so rewriting the pipeline's reshapes
as `reshape(-1, ...)` does not help: `aten._unsafe_view` fails with "Shapes must be 1D
sequences of concrete values", `reshape(-1, ...)` with "reshape new_sizes must all be
positive", in both the default and the `use_v2` converter. To classify N windows, feed them
`batch` at a time (padding the last group), as `run_tflite` does, or export with the batch
the app uses (`resize_tensor_input` on the interpreter does not make a fixed-shape file
dynamic). The ONNX export (`onnx_export`) has a dynamic batch.

How: the run is written as the PyTorch pipeline file (`torch_export.to_torch`), loaded with
`export.limubert_torch.load_pipeline`, traced with `torch.export` at the fixed shape, and
lowered by `litert_torch.convert`. Needs the `tflite` extra (litert-torch, torch, and the
LiteRT runtime `ai-edge-litert` it brings): pip install 'limubert-jax[tflite]'.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from typing import Any

import numpy as np

from limubert_jax.io import checkpoint, storage
from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE
from limubert_jax.models import pipeline, registry
from limubert_jax.runtime.errors import LimuBertError, first_line, import_extra

INPUT = "windows"
OUTPUTS = ("probabilities", "subwindow_logits")
SIGNATURE = "serving_default"
SUPPORTED_HEADS = registry.RECURRENT_HEADS
_PROGRESS_ENV = "LITERT_TORCH_SHOW_PROGRESS"  # litert-torch's switch for its progress lines


def _import_converter():
    """(torch, litert_torch), or a one-line `LimuBertError` naming the extra."""
    torch = import_extra("torch", extra="tflite", reason="TFLite export needs PyTorch, which is not installed")
    litert_torch = import_extra("litert_torch", extra="tflite",
                                reason="TFLite export needs 'litert-torch', which is not installed")
    return torch, litert_torch


def interpreter_class():
    """LiteRT's `Interpreter` class, or a one-line `LimuBertError` naming the extra."""
    return import_extra("ai_edge_litert.interpreter", extra="tflite",
                        reason="running TFLite models needs 'ai-edge-litert', which is not installed").Interpreter


def _torch_pipeline(directory, workdir: str):
    """The run's classifier as the PyTorch `ClassifierPipeline` (eval mode), through the
    files `limubert-convert to_torch` writes (the same path users take)."""
    from limubert_jax.export import limubert_torch, torch_export  # noqa: PLC0415  (imports torch: the tflite extra)

    path = os.path.join(workdir, "pipeline.pt")
    torch_export.to_torch(directory, path)
    return limubert_torch.load_pipeline(path).eval()


def _exportable(torch, pipe):
    """`pipe` with one forward of named outputs: windows -> {probabilities, subwindow_logits}
    (the sub-window logits computed once, the window's probabilities from them)."""

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pipeline = pipe

        def forward(self, windows):
            logits = self.pipeline.subwindow_logits(windows)  # [B, K, C]
            return {"probabilities": torch.softmax(logits, dim=-1).mean(dim=1), "subwindow_logits": logits}

    return Exported().eval()


@contextlib.contextmanager
def _quiet_converter(progress: bool):
    """litert-torch's progress lines off (unless `progress`), and the tracing warnings that
    concern torch internals (GRU weights assigned during export, deprecations) silenced."""
    previous = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "y" if progress else "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = previous


def export_tflite(source: str | os.PathLike, out_path: str | os.PathLike, *, batch: int = 1,
                  overwrite: bool = False, progress: bool = False) -> dict[str, Any]:
    """Writes a trained classifier run (RUN_DIR or its `model/`) as a .tflite file taking raw
    windows [batch, seq_len, feature_num] (a fixed batch: see the module docstring).

    Refuses an existing `out_path` unless `overwrite`; the file appears whole or not at all.
    `progress` shows litert-torch's conversion steps.
    Returns a summary: kind, path, bytes, inputs and outputs ({name: shape}), class_names.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise LimuBertError(f"--batch must be a positive whole number, got {batch!r}")
    directory = checkpoint.resolve_model_dir(source)
    target = storage.check_output_file(out_path, source, directory, overwrite=overwrite)
    torch, litert_torch = _import_converter()
    kind, config = checkpoint.read_model_config(directory)
    if kind != CLASSIFIER_PIPELINE:
        raise LimuBertError(f"{directory}: a '{kind}' checkpoint cannot be exported to TFLite; export a trained "
                            f"classifier run ({CLASSIFIER_PIPELINE}: a classify, finetune or baseline run)")
    if config.head not in SUPPORTED_HEADS:  # before loading the parameters
        raise LimuBertError(f"TFLite export does not support the classifier head '{config.head}'; "
                            f"supported: {', '.join(SUPPORTED_HEADS)}")
    shape = [batch, config.seq_len, config.feature_num]
    with tempfile.TemporaryDirectory(prefix="limubert-tflite-") as workdir:
        module = _exportable(torch, _torch_pipeline(directory, workdir))
        example = torch.zeros(shape, dtype=torch.float32)
        try:
            with torch.no_grad(), _quiet_converter(progress):
                edge = litert_torch.convert(module, sample_kwargs={INPUT: example})
                data = bytes(edge.model_content())
        except Exception as e:  # the converter's messages run to pages; the cause is chained
            raise LimuBertError(f"{directory}: the TFLite conversion failed: {first_line(e)}") from e
    storage.write_together({target: data}, replace=overwrite)
    outputs = {"probabilities": [batch, config.num_classes],
               "subwindow_logits": [batch, config.subwindows, config.num_classes]}
    return {"kind": kind, "path": str(target), "bytes": len(data), "inputs": {INPUT: shape}, "outputs": outputs,
            "class_names": list(config.class_names)}


def run_tflite(path: str | os.PathLike, windows: np.ndarray, *, threads: int = 1) -> dict[str, np.ndarray]:
    """Runs an exported .tflite with the LiteRT interpreter on raw windows [N, S, F]:
    {output name: array [N, ...]}. Any N: the windows go through in groups of the file's
    fixed batch, the last group padded with zeros (their outputs dropped)."""
    interpreter = interpreter_class()(model_content=storage.as_path(path).read_bytes(), num_threads=threads)
    runner = interpreter.get_signature_runner(SIGNATURE)
    shape = [int(d) for d in runner.get_input_details()[INPUT]["shape"]]
    windows = np.asarray(windows, np.float32)
    if windows.ndim != 3 or list(windows.shape[1:]) != shape[1:]:
        raise LimuBertError(f"{path}: takes windows (N, {shape[1]}, {shape[2]}), got shape {tuple(windows.shape)}")
    batch, n = shape[0], len(windows)
    if n == 0:
        raise LimuBertError("no windows to run (an empty input)")
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, batch):
        chunk = windows[start : start + batch]
        rows = len(chunk)
        if rows < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - rows, *shape[1:]), np.float32)])
        for name, value in runner(**{INPUT: np.ascontiguousarray(chunk)}).items():
            parts.setdefault(name, []).append(np.array(value[:rows]))
    return {name: np.concatenate(values) for name, values in parts.items()}


def check_tflite(out_path: str | os.PathLike, source: str | os.PathLike, windows: np.ndarray) -> float:
    """The largest absolute difference, over every output, between the LiteRT interpreter
    running the exported `out_path` and the JAX pipeline of `source` on raw windows [N, S, F]."""
    kind, config, params = checkpoint.load_model(checkpoint.resolve_model_dir(source))
    if kind != CLASSIFIER_PIPELINE:
        raise LimuBertError(f"{source}: holds a {kind} model, not a trained classifier")
    expected = pipeline.predict_batch(params, np.asarray(windows, np.float32), config=config)
    actual = run_tflite(out_path, windows)
    if set(actual) != set(OUTPUTS):
        raise LimuBertError(f"{out_path}: outputs {sorted(actual)} differ from the model's {sorted(OUTPUTS)}")
    return max(float(np.max(np.abs(actual[k] - np.asarray(expected[k])))) for k in OUTPUTS)
