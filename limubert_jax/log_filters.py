"""Log filtering shared by the command-line entry points."""

from __future__ import annotations

import logging as py_logging

from absl import logging


class _QuietLibraries(py_logging.Filter):
    """Drops the INFO chatter of Orbax, TFDS and grain; their warnings still show."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("/orbax/", "/tensorflow_datasets/", "/grain/"))
        return record.levelno >= py_logging.WARNING or not noisy


def quiet_libraries() -> None:
    """Installs the filter on absl's handler (call from an absl `main`)."""
    logging.get_absl_handler().addFilter(_QuietLibraries())
