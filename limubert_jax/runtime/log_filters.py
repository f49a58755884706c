"""Log filtering shared by the command-line entry points."""

from __future__ import annotations

import logging as py_logging

from absl import logging

_LIBRARIES = ("/orbax/", "/tensorflow_datasets/", "/grain/")

# Warnings (and JAX's backend probe) that describe a library's internals, not anything a
# user of these commands did or can act on.
MEANINGLESS = (
    "Unable to initialize backend",  # JAX probing for accelerators this machine does not have
    "has no dataset_info.json",  # TFDS about a dataset it is about to build
    "Using custom data configuration",  # TFDS on every version built on demand (50_200, a user's folder)
    "Given directory is read only",  # Orbax opening a workdir's checkpoints for reading
    "CheckpointManagerOptions.read_only=True",  # ... and adjusting its own options for that
    "Metadata file does not exist",  # Orbax restoring one item of a checkpoint step
    # asyncio at exit, about the sibling reads of a restore that failed (Orbax reads arrays
    # concurrently): the first failure is the one the command reports, in one line.
    "Task exception was never retrieved",
)


class _QuietLibraries(py_logging.Filter):
    """Drops the INFO chatter of Orbax, TFDS and grain (their warnings still show) and the
    MEANINGLESS messages of any library."""

    def filter(self, record: py_logging.LogRecord) -> bool:
        message = record.getMessage()
        if any(text in message for text in MEANINGLESS):
            return False
        noisy = any(part in record.pathname for part in _LIBRARIES)
        return record.levelno >= py_logging.WARNING or not noisy


def quiet_libraries() -> None:
    """Installs the filter (once; call from a command's entry point) on every handler that
    may print a library's record: absl's (absl commands), the root logger's, and Python's
    last-resort handler (commands without absl's app, where no handler is configured)."""
    handlers = [logging.get_absl_handler(), *py_logging.getLogger().handlers, py_logging.lastResort]
    for handler in handlers:
        if handler is not None and not any(isinstance(f, _QuietLibraries) for f in handler.filters):
            handler.addFilter(_QuietLibraries())
