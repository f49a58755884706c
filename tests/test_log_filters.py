"""The commands' log filter: library internals a user cannot act on are dropped, real
warnings and the project's own messages stay."""

from __future__ import annotations

import logging

import pytest

from limubert_jax.runtime import log_filters

ORBAX = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"


def _kept(message: str, level: int = logging.WARNING, path: str = ORBAX) -> bool:
    return log_filters._QuietLibraries().filter(logging.LogRecord("lib", level, path, 1, message, (), None))


@pytest.mark.parametrize("message, path", [
    ("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so", "/site-packages/jax/_src/xla_bridge.py"),
    ("Variant folder /data/synthetic_imu/20_120/1.0.0 has no dataset_info.json",
     "/site-packages/tensorflow_datasets/core/utils/file_utils.py"),
    ("Given directory is read only=/w/checkpoints", ORBAX),
    ("CheckpointManagerOptions.read_only=True, setting save_interval_steps=0.", ORBAX),
    ("Metadata file does not exist: /w/checkpoints/60/state/_CHECKPOINT_METADATA", ORBAX),
    ("Task exception was never retrieved\nfuture: <Task finished name='Task-9' coro=<_read_array_index() done> "
     "exception=ValueError('OUT_OF_RANGE: Error opening \"zarr\" driver')>", "/lib/python3.11/asyncio/base_events.py"),
])
def test_meaningless_messages_are_dropped_at_any_level(message, path):
    assert not _kept(message, logging.WARNING, path)
    assert not _kept(message, logging.INFO, path)


def test_warnings_and_own_messages_stay():
    assert _kept("Error while saving checkpoint: disk full")  # a library's warning
    assert not _kept("Saving checkpoint at step 60", logging.INFO)  # its chatter
    assert _kept("resumed from step 60", logging.INFO, "/work/limubert_jax/train.py")


def test_installing_twice_adds_one_filter():
    from absl import logging as absl_logging

    log_filters.quiet_libraries()
    log_filters.quiet_libraries()
    handler = absl_logging.get_absl_handler()
    assert sum(isinstance(f, log_filters._QuietLibraries) for f in handler.filters) == 1
