"""Shared fixtures: the reference files (in the repository, `tests/reference/`) and small helpers."""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path

import pytest

REFERENCE_ENV = "LIMUBERT_REFERENCE_DIR"
# The released weights and the original code's outputs, carried by the repository
# (tests/reference/README.md): a fresh clone runs every golden test.
DEFAULT_REFERENCE = Path(__file__).resolve().parent / "reference"
RELEASED_DATASETS = ("hhar", "motion", "uci", "shoaib")


def reference_dir() -> Path:
    """The folder holding `golden/`, `weights/` and `uci_label_20_120.npy`: the repository's
    `tests/reference`, or `$LIMUBERT_REFERENCE_DIR` where set (another copy of the same files)."""
    return Path(os.environ.get(REFERENCE_ENV) or DEFAULT_REFERENCE).resolve()


def child_env(*, xla_cache: str = "shared") -> dict[str, str]:
    """The environment for a child process, with the session's persistent XLA cache (set up
    by the repository's conftest.py) "shared", "read-only" (the child may be killed, and
    JAX does not write cache entries atomically) or "off" (the child must compile)."""
    env = dict(os.environ)
    if xla_cache == "read-only":
        env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "1e9"  # reads, never writes
    elif xla_cache == "off":
        env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
    elif xla_cache != "shared":
        raise ValueError(xla_cache)
    return env


def loop_trip_counts(compiled_hlo: str) -> Counter:
    """How many loops of each known trip count a compiled program (`.compile().as_text()`)
    has, e.g. Counter({"4": 1}): XLA records the count in each while loop's backend config."""
    return Counter(re.findall(r'"known_trip_count":\{"n":"(\d+)"\}', compiled_hlo))


def random_params(init, seed: int = 0, scale: float = 0.2):
    """Parameters shaped like `init(key)` (e.g. `model.init_params`), drawn with NumPy: traced,
    never compiled. Tests of export and inference need weights of the right shapes, not the
    initialisers' (whose programs take seconds each to compile)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.normal(0.0, scale, s.shape).astype(s.dtype),
                        jax.eval_shape(init, jax.random.key(0)))


def random_pipeline_params(config, seed: int = 0) -> dict:
    """`random_params` for a trained classifier (`models.pipeline`): head, and encoder if any."""
    from limubert_jax.models import registry
    from limubert_jax.models.encoder import LimuBertModel4Pretrain

    params = {"head": random_params(lambda k: registry.init_classifier(
        config.head_module(), k, seq_len=config.merge, input_dim=config.head_input_dim), seed)}
    if config.encoder is not None:
        encoder = random_params(LimuBertModel4Pretrain(config.encoder).init_params, seed + 1)
        params["encoder"] = {"transformer": encoder["transformer"]}
    return params


# The heaviest modules, heaviest first (CPU seconds of each run alone on the 2-core machine:
# 45-85 s down to about 20 s). With `--dist loadscope` pytest-xdist hands out whole modules in
# collection order, so a heavy module collected late runs on alone at the end while the
# other workers idle; the other modules keep their order after these.
_HEAVIEST_MODULES = ("test_benchmark_smoke.py", "test_downstream.py", "test_evaluation_protocol.py",
                     "test_small_datasets.py", "test_multiprocess.py",
                     "test_train.py", "test_pretrain_step.py", "test_precision.py", "test_short_encoder.py",
                     "test_workdir.py", "test_dataset_builders.py", "test_outputs.py", "test_released.py",
                     "test_cpu_devices.py")


def pytest_collection_modifyitems(config, items):
    """The heaviest modules first (`_HEAVIEST_MODULES`); a stable sort, so each module's
    tests keep their order."""
    rank = {name: i for i, name in enumerate(_HEAVIEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(autouse=True)
def _optimized_compiles(request):
    """A test marked `optimized` compiles with XLA's backend optimisation, as users' runs do."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    import jax

    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture(scope="session")
def reference() -> Path:
    """The reference folder (`reference_dir`). It is part of the repository, so a missing one
    is an error, never a skip: a broken checkout or a wrong `$LIMUBERT_REFERENCE_DIR`."""
    path = reference_dir()
    if not ((path / "golden").is_dir() and (path / "weights").is_dir()):
        source = f"${REFERENCE_ENV}" if os.environ.get(REFERENCE_ENV) else "the repository's copy"
        pytest.fail(f"reference files not found at {path} ({source}): expected golden/ and weights/ there",
                    pytrace=False)
    return path


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A TFDS data_dir holding synthetic_imu/20_120, built once for the whole session; tests
    only read it (those that build other datasets use their own data_dir)."""
    from limubert_jax.data import loading

    path = tmp_path_factory.mktemp("synthetic-tfds")
    loading.load_pretrain_data({"name": "synthetic_imu", "version": "20_120", "data_dir": str(path)})
    return path
