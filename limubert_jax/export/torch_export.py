"""Checkpoints as PyTorch files (`limubert-convert to_torch`): state dicts with the reference's
keys, or a trained classifier for the standalone `limubert_torch.ClassifierPipeline`, as
`.pt` + `.json` sidecar or as one `.safetensors` file (written without torch).

* A LIMU-BERT or GRU-classifier checkpoint: exactly the reference's keys and shapes (the
  unused `fc` included), loadable with `load_state_dict(..., strict=True)` in the original
  code; the sidecar holds the config in the reference's field names.
* A classifier run (`RUN_DIR` or its `model/`; recurrent heads): the keys of
  `limubert_torch.ClassifierPipeline` (`encoder.transformer.*`, `head.*`); the sidecar holds
  everything the pipeline needs (`pipeline_json`).

The safetensors file holds the same tensors and the sidecar's JSON text under the metadata
key `SAFETENSORS_CONFIG_KEY`. PyTorch files are read with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import zipfile
from typing import Any

import numpy as np
from etils import epath

from limubert_jax.io import checkpoint, safetensors, storage
from limubert_jax.io.state_dict import (
    CLASSIFIER_PIPELINE,
    LIMU_BERT,
    StateDict,
    expected_shapes,
    params_to_state_dict,
    validate_state_dict,
)
from limubert_jax.models.pipeline import AGGREGATION
from limubert_jax.runtime.errors import LimuBertError, first_line, import_extra

# Shared with the standalone file (limubert_torch.py imports nothing of the package; a test
# checks that the two agree).
FORMAT = "limubert_jax.classifier_pipeline"
FORMAT_VERSION = 1
SAFETENSORS_CONFIG_KEY = "limubert_jax_config"
FORMATS = ("pt", "safetensors")


def import_torch():
    """torch, or a one-line `LimuBertError` naming the extra to install."""
    return import_extra("torch", extra="torch", reason="PyTorch is needed for this")


def load_torch_state_dict(path: str | os.PathLike) -> StateDict:
    """Reads a PyTorch state dict file (`weights_only=True`) as NumPy arrays."""
    path = storage.as_path(path)
    if not path.is_file():
        raise LimuBertError(f"{path}: no such file")
    foreign = foreign_format(path)
    if foreign is not None:
        raise LimuBertError(f"{path}: {foreign}")
    torch = import_torch()
    try:
        with path.open("rb") as f:
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise LimuBertError(f"{path}: not a readable PyTorch file ({first_line(e)})") from None
        # Torch's own message goes on to suggest weights_only=False, i.e. running the code.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" (it references {found.group(1)})" if found else ""
        raise LimuBertError(
            f"{path}: refused: the file holds code or objects that are not plain tensors{what}; "
            "it was loaded with weights_only=True, which runs none of it, and a state dict needs nothing else"
        ) from None
    except Exception as e:  # torch raises many types for foreign or damaged files
        raise LimuBertError(f"{path}: not a readable PyTorch file ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise LimuBertError(f"{path}: not a state dict (the file holds a {type(obj).__name__})")
    state_dict: StateDict = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise LimuBertError(
                f"{path}: not a state dict (entry {key!r} is a {type(value).__name__}, not a tensor)"
            )
        if value.layout != torch.strided:
            raise LimuBertError(
                f"{path}: entry {key!r} is a sparse tensor ({value.layout}); model weights are dense tensors"
            )
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16
            tensor = tensor.float()
        try:
            state_dict[key] = tensor.numpy()
        except (TypeError, RuntimeError) as e:  # quantized or otherwise NumPy-less tensors
            raise LimuBertError(f"{path}: entry {key!r} is not a plain tensor ({first_line(e)})") from None
    return state_dict


def foreign_format(path: str | os.PathLike) -> str | None:
    """What another format's file at `path` is and what to do with it, by its first bytes;
    None for what may be a PyTorch file (a zip holding a `data.pkl`, or a legacy pickle).

    torch.load under weights_only reads any foreign file as a pickle and reports it as
    "code or objects that are not plain tensors", which sends the user hunting for code.
    """
    path = storage.as_path(path)
    with path.open("rb") as f:
        head = f.read(64)
        size = f.seek(0, io.SEEK_END)
    not_torch = "not a PyTorch state dict (a .pt file saved with torch.save)"
    if head.startswith(b"\x93NUMPY"):
        return f"is a NumPy .npy array, {not_torch}; from_torch reads the weights of the reference release"
    if head.startswith(b"PK\x03\x04"):
        try:
            with path.open("rb") as f, zipfile.ZipFile(f) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError, ValueError):
            return None
        if any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return None  # torch.save's zip format
        if names and all(n.endswith(".npy") for n in names):
            return f"is a NumPy .npz archive, {not_torch}"
        return f"is a zip archive ({', '.join(names[:3]) or 'empty'}), {not_torch}"
    if len(head) >= 9 and head[8:9] == b"{":
        (header,) = struct.unpack("<Q", head[:8])
        if 8 + header <= size:
            return (f"is a safetensors file, {not_torch}; convert the dict that safetensors.torch.load_file "
                    "reads from it, saved with torch.save")
    if head.lstrip()[:1] in (b"{", b"["):
        return f"is JSON text, {not_torch}; a model's config .json goes with its .pt, which is the file to convert"
    if head[4:8] == b"TFL3":
        return f"is a TFLite model, {not_torch}"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return f"is an HDF5 file (Keras weights?), {not_torch}"
    if path.suffix.lower() == ".onnx" and head[:1] == b"\x08":  # ModelProto's first field, ir_version
        return f"is an ONNX model, {not_torch}"
    return None


def pipeline_json(config) -> dict[str, Any]:
    """What the standalone `ClassifierPipeline` is built from: the classifier's config, its
    head's architecture and the normalization constants."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, **config.to_dict(),
            "head_config": config.head_module().config.to_dict(), "normalization": config.normalization,
            "aggregation": AGGREGATION}


def reference_json(kind: str, config) -> dict[str, Any]:
    """The sidecar's content: the model config in the field names of the reference's JSON
    config files, or for a classifier run `pipeline_json`."""
    if kind == CLASSIFIER_PIPELINE:
        return pipeline_json(config)
    return config.to_dict() if kind == LIMU_BERT else config.to_reference_json()


def sidecar_path(out_path: str | os.PathLike) -> epath.Path:
    """Where `to_torch` writes the config beside the state dict OUT: OUT with its suffix
    replaced by `.json` (`uci.pt` -> `uci.json`, `uci` -> `uci.json`)."""
    return storage.as_path(out_path).with_suffix(".json")


def file_format(out_path: str | os.PathLike, format: str | None = None) -> str:
    """The format to write OUT in: `format`, or by OUT's suffix (`.safetensors`, else pt); a
    format that contradicts the suffix is an error."""
    suffix = storage.as_path(out_path).suffix.lower()
    by_name = "safetensors" if suffix == ".safetensors" else "pt"
    if format is None:
        return by_name
    if format not in FORMATS:
        raise LimuBertError(f"--format={format}: use one of {', '.join(FORMATS)}")
    if (format == "safetensors") != (by_name == "safetensors"):
        wanted = storage.as_path(out_path).with_suffix(".safetensors" if format == "safetensors" else ".pt")
        raise LimuBertError(f"{out_path}: --format={format} but the name ends in {suffix or 'no suffix'}; "
                            f"name it {wanted}")
    return format


def check_outputs(ckpt: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False,
                  format: str | None = None) -> list[epath.Path]:
    """Raises `LimuBertError` unless `to_torch` may write its outputs; returns them (OUT, and
    for the pt format its sidecar)."""
    out_path = storage.as_path(out_path)
    targets = [out_path]
    if file_format(out_path, format) == "pt":
        if out_path.suffix.lower() == ".json":
            raise LimuBertError(
                f"{out_path}: ends in .json, so its config sidecar (OUT with its suffix replaced by "
                f".json) would overwrite it; name the state dict e.g. {out_path.with_suffix('.pt')}"
            )
        targets.append(sidecar_path(out_path))
    for target in targets:
        storage.check_output_file(target, ckpt, overwrite=overwrite)
    return targets


def to_torch(ckpt: str | os.PathLike, out_path: str | os.PathLike, *, overwrite: bool = False,
             format: str | None = None) -> tuple[str, Any]:
    """Writes a checkpoint (or a classifier run) as a PyTorch state dict `OUT` plus its sidecar
    `sidecar_path(OUT)`, or as one `.safetensors` file (`format`, default by OUT's suffix;
    written without torch). Existing files are refused unless `overwrite`; the outputs
    appear together, or not at all. Returns (kind, config)."""
    fmt = file_format(out_path, format)
    targets = check_outputs(ckpt, out_path, overwrite=overwrite, format=fmt)
    kind, config = checkpoint.read_model_config(ckpt)
    expected = expected_shapes(kind, config)  # before loading: an unsupported head fails here
    torch = import_torch() if fmt == "pt" else None
    _, config, params = checkpoint.load_model(ckpt)
    state_dict = params_to_state_dict(params)
    validate_state_dict(state_dict, expected, str(ckpt))
    arrays = {key: np.array(state_dict[key], order="C", copy=True) for key in expected}
    text = json.dumps(reference_json(kind, config), indent=2) + "\n"
    if fmt == "safetensors":
        storage.write_together({targets[0]: safetensors.dumps(arrays, {SAFETENSORS_CONFIG_KEY: text})},
                               replace=overwrite)
        return kind, config
    state_bytes = io.BytesIO()  # a state dict is megabytes: serialized in memory, then written
    torch.save({key: torch.from_numpy(array) for key, array in arrays.items()}, state_bytes)
    storage.write_together({targets[0]: state_bytes.getvalue(), targets[1]: text.encode("utf-8")},
                           replace=overwrite)
    return kind, config
