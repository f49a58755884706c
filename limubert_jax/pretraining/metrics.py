"""A pretraining run's metrics: one JSON line per epoch in `metrics.jsonl`, mirrored to
TensorBoard (tensorboardX: event files without TensorFlow)."""

from __future__ import annotations

import importlib.util
import json
import sys
from typing import Any

from absl import logging
from etils import epath

from limubert_jax.io import storage


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line that is not a record (a write cut short) sorts last."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


# The client library (module, pip package) of each object store tensorboardX writes to.
_TENSORBOARD_CLIENTS = {"gs": ("google.cloud.storage", "google-cloud-storage"), "s3": ("boto3", "boto3")}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch.

    tensorboardX imports torch when it is installed, only to accept torch tensors, which
    this writer never passes; importing torch costs a command seconds of its start-up.
    Where torch is already imported, it is used as it is.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter  # noqa: PLC0415  (see above: torch kept out unless present)

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    finally:
        if sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricsWriter:
    """Appends one JSON line per epoch to `metrics.jsonl` and mirrors scalars to TensorBoard.

    In an object store (no appends) the file is rewritten whole after each epoch instead.
    """

    def __init__(self, workdir: epath.Path, start_step: int | None = None):
        """With `start_step` (where the run starts or resumes), lines of later steps are
        dropped and TensorBoard purges its events of those steps: the run writes them again."""
        self._path = workdir / "metrics.jsonl"
        self._append = storage.is_local(workdir)
        lines = self._path.read_text().splitlines(keepends=True) if self._path.exists() else []
        self._lines = [line for line in lines if start_step is None or _record_step(line) <= start_step]
        if len(self._lines) != len(lines):
            storage.write_text(self._path, "".join(self._lines))
        if self._append:
            self._jsonl = open(self._path, "a")
        self._tb = None
        client = _TENSORBOARD_CLIENTS.get(str(workdir).split("://")[0]) if not storage.is_local(workdir) else None
        # Checked first: a tensorboardX writer whose client import failed prints a traceback
        # again when it is garbage-collected.
        if client is not None and not _importable(client[0]):
            logging.warning("no TensorBoard events in %s: tensorboardX needs %s for it", workdir, client[1])
        else:
            try:
                self._tb = _summary_writer_class()(str(workdir / "tensorboard"),
                                                   purge_step=start_step + 1 if start_step else None)
            except ImportError as e:
                logging.warning("no TensorBoard events in %s: %s", workdir, e)

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record) + "\n"
        if self._append:
            self._jsonl.write(line)
            self._jsonl.flush()
        else:
            self._lines.append(line)
            storage.write_text(self._path, "".join(self._lines))
        if self._tb is None:
            return
        for key, value in record.items():
            if key not in ("step", "epoch"):
                self._tb.add_scalar(key, value, record["step"])
        self._tb.flush()

    def close(self) -> None:
        if self._append:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
