"""Model checkpoints on disk: Orbax-saved parameters with the model config beside them.

Layout of a model checkpoint directory (what `limubert-convert from_torch` writes):

    DIR/model_config.json   {"kind": "limu_bert" | "gru_classifier" | "classifier_pipeline", "config": {...}}
    DIR/params/             Orbax (StandardCheckpointer) pytree of the Flax parameters
    DIR/README.md           its model card (`io.model_card`): what it is, where it comes from, how to load it

Local writes go to a hidden sibling directory that is renamed into place only when
complete, so an interrupted or failed save never leaves a half-written checkpoint under DIR.
In an object store (`gs://`), which has no renames, DIR's model_config.json is written last
(and removed first when replacing): a DIR without it is not a checkpoint to any reader.
Every path may be local or an object-store path (`limubert_jax.io.storage`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from limubert_jax.io import storage
from limubert_jax.io.model_card import CARD_FILE
from limubert_jax.io.state_dict import CLASSIFIER_PIPELINE, GRU_CLASSIFIER, LIMU_BERT
from limubert_jax.models.encoder import LimuBertConfig
from limubert_jax.models.pipeline import MODEL_DIR, ClassifierPipelineConfig
from limubert_jax.models.recurrent import GRUClassifierConfig
from limubert_jax.runtime.errors import LimuBertError, first_line

CONFIG_FILE = "model_config.json"
PARAMS_DIR = "params"
# A training workdir: `model_config.json` plus an Orbax CheckpointManager directory whose
# steps hold the train state and a JSON record of the epoch's metrics.
CHECKPOINTS_DIR = "checkpoints"
STATE_ITEM = "state"
META_ITEM = "meta"
BEST_METRIC = "val_loss"  # a training run's best step has the lowest validation loss
_CONFIG_CLASSES = {LIMU_BERT: LimuBertConfig, GRU_CLASSIFIER: GRUClassifierConfig,
                   CLASSIFIER_PIPELINE: ClassifierPipelineConfig}


def leaf_name(path) -> str:
    """A pytree key path as `a/b/0`: dict keys, attribute names and indices alike."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def host_copy(tree):
    """The pytree with every array leaf as a NumPy array on this host; a replicated
    `jax.Array` spanning processes is read from this process's first copy."""
    def to_host(leaf):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_data(0)
        return np.asarray(leaf)

    return jax.tree_util.tree_map(to_host, tree)


def content_digest(tree) -> str:
    """SHA-256 of a pytree's arrays: each leaf's path (dict keys, attribute names, indices),
    dtype, shape and bytes, in path order. Containers do not matter (a `TrainState` and the
    dict Orbax restores without a target give the same digest of the same arrays), nor where
    the arrays are (`host_copy`)."""
    entries = [(leaf_name(path), np.ascontiguousarray(leaf))
               for path, leaf in jax.tree_util.tree_flatten_with_path(host_copy(tree))[0]]
    digest = hashlib.sha256()
    for name, array in sorted(entries, key=lambda e: e[0]):
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes())
    return digest.hexdigest()


def model_record(config) -> dict[str, Any]:
    """The content of CONFIG_FILE for a model config: its kind and fields."""
    return {"kind": kind_of(config), "config": config.to_dict()}


def kind_of(config) -> str:
    """The checkpoint kind of a model config object."""
    for kind, cls in _CONFIG_CLASSES.items():
        if isinstance(config, cls):
            return kind
    raise TypeError(f"not a model config: {type(config).__name__}")


def save_model(directory: str | os.PathLike, params: Any, config, *, overwrite: bool = False,
               card: str | None = None) -> epath.Path:
    """Saves `params` and `config` as a model checkpoint directory, atomically, with its
    model card `card` (`io.model_card`) as README.md when given.

    An existing non-empty `directory` is an error unless `overwrite` is set, and even then
    unless it is a model checkpoint (`model_config.json`, `params/` and perhaps its README.md):
    `overwrite` replaces what this function writes, never a training workdir or a user's
    files. The old checkpoint is replaced only after the new one is complete (locally; see
    the module docstring for object stores).
    """
    directory = storage.absolute(directory)
    if directory.exists() and not directory.is_dir():
        raise LimuBertError(f"{directory}: exists and is not a directory")
    if directory.is_dir():
        _check_replaceable(directory, overwrite)
    record = dict(model_record(config), params_sha256=content_digest(params))
    text = json.dumps(record, indent=2) + "\n"
    if not storage.is_local(directory):
        (directory / CONFIG_FILE).unlink(missing_ok=True)
        (directory / PARAMS_DIR).rmtree(missing_ok=True)
        _save_params(directory / PARAMS_DIR, params)
        if card is not None:
            storage.write_text(directory / CARD_FILE, card)
        storage.write_text(directory / CONFIG_FILE, text)
        return directory
    staging = None
    try:
        with storage.staged(directory, directory=True, replace=overwrite) as (staging,):
            _save_params(staging / PARAMS_DIR, params)
            if card is not None:
                (staging / CARD_FILE).write_text(card)
            (staging / CONFIG_FILE).write_text(text)
    except BaseException:
        if staging is not None:
            _remove_after_late_writes(staging)
        raise
    return directory


def _remove_after_late_writes(staging: epath.Path) -> None:
    # Orbax reports a failed save (a full disk) while TensorStore still writes the other
    # arrays: those writes recreate folders under the staging directory just after `staged`
    # removed it (seen in a third of the failures). They end within milliseconds.
    for delay in (0.02, 0.05, 0.1, 0.2):
        time.sleep(delay)
        if os.path.lexists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _save_params(path, params) -> None:
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, params)
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()


def _check_replaceable(directory: epath.Path, overwrite: bool) -> None:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    own = (CONFIG_FILE, PARAMS_DIR + "/", CARD_FILE)  # what `save_model` writes
    if not names or (overwrite and set(names) <= set(own) and {CONFIG_FILE, PARAMS_DIR + "/"} <= set(names)):
        return
    if not overwrite:
        raise LimuBertError(f"{directory}: already exists and is not empty (pass --overwrite to replace it)")
    foreign = [n for n in names if n not in own] or names
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    raise LimuBertError(
        f"{directory}: is not a model checkpoint, so --overwrite will not replace it (it holds "
        f"{shown}; a checkpoint holds exactly {CONFIG_FILE}, {PARAMS_DIR}/ and perhaps {CARD_FILE})"
    )


def restore_on_one_device(path: str | os.PathLike) -> Any:
    """The pytree of an Orbax StandardCheckpointer directory, on this process's first device.

    Orbax otherwise restores arrays with the shardings they were saved with, which exist only
    on the device topology of the run that saved them (a run on several devices or processes).
    """
    path = storage.absolute(path)
    checkpointer = ocp.StandardCheckpointer()
    metadata = checkpointer.metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)  # older Orbax returns the tree itself
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device), tree)
    return checkpointer.restore(path, target)


def _is_workdir(path: epath.Path) -> bool:
    return (path / CHECKPOINTS_DIR).is_dir()


def resolve_model_dir(path: str | os.PathLike) -> epath.Path:
    """The model checkpoint or training workdir that `path` names (it holds `model_config.json`),
    or the trained model of a downstream run directory (its `model/`)."""
    path = storage.as_path(path)
    if not path.exists():
        raise LimuBertError(f"{path}: no such checkpoint directory")
    if (path / CONFIG_FILE).is_file():
        return path
    if (path / MODEL_DIR / CONFIG_FILE).is_file():
        return path / MODEL_DIR
    raise LimuBertError(
        f"{path}: not a model checkpoint (no {CONFIG_FILE}); expected the output of "
        "'limubert-convert from_torch' or a training workdir"
    )


def best_metric(metrics: dict[str, Any]) -> float:
    """The value a run's checkpoints are ranked by (lower is better), from a step's metrics."""
    return metrics[BEST_METRIC]


def best_step(workdir: str | os.PathLike) -> int:
    """The step with the lowest validation loss among a training workdir's checkpoints."""
    manager = ocp.CheckpointManager(
        storage.absolute(storage.as_path(workdir) / CHECKPOINTS_DIR),
        options=ocp.CheckpointManagerOptions(best_fn=best_metric, best_mode="min", read_only=True),
    )
    step = manager.best_step()
    manager.close()
    if step is None:
        raise LimuBertError(f"{workdir}: the training run has not saved a checkpoint yet")
    return step


def read_model_config(path: str | os.PathLike) -> tuple[str, Any]:
    """(kind, config) of a checkpoint directory or training workdir, without its parameters."""
    directory = resolve_model_dir(path)
    try:
        record = json.loads((directory / CONFIG_FILE).read_text())
        kind = record["kind"]
        return kind, _CONFIG_CLASSES[kind].from_dict(record["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise LimuBertError(f"{directory / CONFIG_FILE}: not a valid model config ({e})") from None


def load_model(path: str | os.PathLike) -> tuple[str, Any, dict]:
    """Loads a model: returns (kind, config, params as NumPy arrays).

    `path` is a checkpoint directory, or a training workdir whose best checkpoint is taken.
    Parameters holding NaN or Inf are an error naming the first one.
    """
    directory = resolve_model_dir(path)
    kind, config = read_model_config(directory)
    params_dir = check_saved(directory)
    if _is_workdir(directory):
        what = f"checkpoint step {params_dir.parent.name} of {directory}"
        expected = _json(params_dir.parent / META_ITEM / "metadata", what).get("params_sha256")
    else:
        what, expected = f"checkpoint {directory}", _json(directory / CONFIG_FILE, str(directory)).get("params_sha256")
    try:
        restored = restore_on_one_device(params_dir)
    except Exception as e:  # noqa: BLE001  (tensorstore and Orbax raise many kinds for damaged files)
        raise LimuBertError(f"{what} cannot be read ({first_line(e)})") from None
    params = _to_plain_dict(restored["params"] if _is_workdir(directory) else restored)
    # Checkpoints written before digests were recorded have none to check.
    if expected is not None and content_digest(params) != expected:
        raise LimuBertError(f"{what} is corrupted: its parameters differ from what was saved (SHA-256 mismatch)")
    _check_finite_params(params, directory)
    return kind, config, params


def _json(path: epath.Path, what: str) -> dict:
    try:
        return json.loads(storage.as_path(path).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise LimuBertError(f"{what}: {path} is not readable JSON ({e})") from None


def _check_finite_params(params: dict, source: epath.Path) -> None:
    for keys, leaf in jax.tree_util.tree_leaves_with_path(params):
        if np.issubdtype(leaf.dtype, np.inexact) and not np.isfinite(leaf).all():
            name = leaf_name(keys)
            raise LimuBertError(
                f"{source}: parameter '{name}' holds NaN or Inf "
                "(a damaged checkpoint, or weights saved after they diverged); refusing to use it"
            )


def check_saved(directory: str | os.PathLike) -> epath.Path:
    """The Orbax directory holding the parameters of a model checkpoint (its `params/`) or of
    a training workdir (its best step's train state); an error if there is none."""
    directory = storage.as_path(directory)
    if _is_workdir(directory):
        return storage.absolute(directory / CHECKPOINTS_DIR / str(best_step(directory)) / STATE_ITEM)
    if not (directory / PARAMS_DIR).is_dir():
        raise LimuBertError(f"{directory}: missing the '{PARAMS_DIR}' Orbax directory")
    return storage.absolute(directory / PARAMS_DIR)


def _to_plain_dict(tree):
    if isinstance(tree, dict):
        return {k: _to_plain_dict(v) for k, v in tree.items()}
    return np.asarray(tree)
