"""TFDS builders for IMU datasets, installed as `limubert_jax.datasets`.

Importing this package registers every builder with TFDS, so that
`tfds.builder("synthetic_imu/20_120", data_dir=...)` and `tfds.data_source(...)` find them.
A builder lives in `<name>/<name>_dataset_builder.py` (class `Builder`, TFDS folder layout)
and is discovered here by that layout; its package must also be listed under
`[tool.setuptools] packages` in pyproject.toml.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

if __name__ != "limubert_jax.datasets":  # e.g. `import datasets` from the repository root
    raise ImportError(
        f"this folder is the package `limubert_jax.datasets` (imported as {__name__!r}); "
        "import it as `limubert_jax.datasets`. It is not Hugging Face's `datasets`: run from "
        "outside the repository root if that is what you meant to import."
    )

from limubert_jax.datasets import tfds_without_tensorflow  # noqa: E402

# Here, before any builder is imported: every build (any builder, any caller) goes through
# TFDS's shuffler, which needs TensorFlow for corpora past its memory limit otherwise.
tfds_without_tensorflow.spill_shuffler_buckets_without_tensorflow()

BUILDERS: dict = {}  # TFDS name -> Builder class, for every builder in this folder

for _module in pkgutil.iter_modules(__path__):
    _builder = f"{_module.name}_dataset_builder"
    if _module.ispkg and importlib.util.find_spec(f"{__name__}.{_module.name}.{_builder}"):
        _cls = importlib.import_module(f"{__name__}.{_module.name}.{_builder}").Builder
        BUILDERS[_cls.name] = _cls


def registered_names() -> list[str]:
    """Names of the IMU dataset builders registered by this package, sorted."""
    return sorted(BUILDERS)


__all__ = ["BUILDERS", "registered_names"]
