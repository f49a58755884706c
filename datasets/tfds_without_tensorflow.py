"""TFDS builds without TensorFlow (installed as `limubert_jax.datasets.tfds_without_tensorflow`).

The package applies `spill_shuffler_buckets_without_tensorflow()` when it is imported
(`limubert_jax/datasets/__init__.py`), before any builder runs: every build goes through
TFDS's shuffler, and this project does not install TensorFlow.
"""

from __future__ import annotations

import importlib.util

from etils import epath


class _ShufflerFiles:
    """What TFDS's shuffler (`tensorflow_datasets.core.shuffle`) asks of TensorFlow, on etils.epath.

    A build writes its examples through that shuffler, which holds up to 1 GB of serialized
    examples in memory and then spills them to bucket files through `tf.io.gfile`: without
    TensorFlow, every dataset larger than that (a user's corpus of a few million windows)
    failed with "No module named 'tensorflow'". These are the only calls it makes there.
    """

    class errors:  # noqa: N801  (mirrors tf.errors)
        class ResourceExhaustedError(OSError):
            message = ""

    class io:  # noqa: N801  (mirrors tf.io.gfile)
        class gfile:  # noqa: N801
            @staticmethod
            def GFile(path, mode="r"):  # noqa: N802
                return epath.Path(path).open(mode)

            @staticmethod
            def exists(path) -> bool:
                return epath.Path(path).exists()

            @staticmethod
            def remove(path) -> None:
                epath.Path(path).unlink()


def spill_shuffler_buckets_without_tensorflow() -> None:
    """Points TFDS's shuffler at `_ShufflerFiles` when TensorFlow is not installed."""
    if importlib.util.find_spec("tensorflow") is None:
        from tensorflow_datasets.core import shuffle  # noqa: PLC0415

        shuffle.tf = _ShufflerFiles

