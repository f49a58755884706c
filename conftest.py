"""Repository-level pytest hooks.

A persistent XLA compilation cache in a fresh temporary folder serves the whole session:
the test process and every subprocess it starts (the main job, the CLIs, fake-device runs)
find the programs compiled before them instead of compiling them again. It is removed at the
end of the session; a user's own cache (`JAX_COMPILATION_CACHE_DIR`) is never read or written.
Executables loaded from it are the ones compiled, so results do not change. The test process
runs on one CPU device; the main job and CLIs in child processes split the cores into devices
as they do for users.

Compiling is most of the suite's time on CPU, and most tests run a program a few times: the
session compiles without XLA's backend (LLVM) optimisation (`jax_disable_most_optimizations`,
inherited by the children too), which halves compile times; the programs compute the same
operations, only slower (values may differ in the last float32 bits). Tests that run long or
compare with the original code's outputs are marked `optimized` and compile as users' runs do
(`tests/conftest.py`).

Where Python may not write bytecode next to the sources (`PYTHONDONTWRITEBYTECODE`, and no
`PYTHONPYCACHEPREFIX` of the user's), every process of the session would compile the source
of JAX, TensorFlow, PyTorch and the package again (2-8 s each, and the suite starts dozens):
the session keeps their bytecode in a temporary folder of its own instead
(`PYTHONPYCACHEPREFIX`, inherited by the workers and children), removed at its end; nothing is
written into the tree or the environment.
"""
import os
import shutil
import sys
import tempfile


# JAX's settings for the session; it reads them from the environment at import, and the
# children inherit them from there.
_SESSION_SETTINGS = {
    "jax_disable_most_optimizations": True,  # see the module docstring; `optimized` tests undo it
    "jax_enable_compilation_cache": True,
    "jax_persistent_cache_min_compile_time_secs": 0.0,  # every program: tests compile many small ones
    "jax_persistent_cache_min_entry_size_bytes": -1,
}
# XLA:CPU's newer fusion emitters take about twice as long to compile the suite's programs as
# the loop emitters they replace (measured: 17 -> 8 CPU-s for the one- and eight-device step
# test); the programs compute the same operations. Appended to the user's XLA_FLAGS, which the
# children inherit; a test that sets a child's XLA_FLAGS itself adds `LIMUBERT_TESTS_XLA_FLAGS`.
_SESSION_XLA_FLAGS = "--xla_cpu_use_fusion_emitters=false"
_XLA_FLAGS_OWNER = "LIMUBERT_TESTS_XLA_FLAGS"
_OWNER = "LIMUBERT_TESTS_XLA_CACHE"  # the session's folder, for pytest-xdist workers to share
_xla_cache_dir = None  # the folder this process made, and removes
_PYCACHE_OWNER = "LIMUBERT_TESTS_PYCACHE"  # the session's bytecode folder, likewise
_pycache_dir = None


def _share_bytecode() -> None:
    """The session's bytecode folder (module docstring), where bytecode is not written already."""
    global _pycache_dir
    shared = os.environ.get(_PYCACHE_OWNER)
    if not (os.environ.get("PYTEST_XDIST_WORKER") and shared and os.path.isdir(shared)):
        if not sys.dont_write_bytecode or sys.pycache_prefix:  # the user's own setting: kept
            return
        shared = _pycache_dir = tempfile.mkdtemp(prefix="limubert-tests-pycache-")
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.update(PYTHONPYCACHEPREFIX=shared, **{_PYCACHE_OWNER: shared})
    sys.pycache_prefix, sys.dont_write_bytecode = shared, False


def pytest_configure(config):
    global _xla_cache_dir
    _share_bytecode()
    shared = os.environ.get(_OWNER)
    if not (os.environ.get("PYTEST_XDIST_WORKER") and shared and os.path.isdir(shared)):
        shared = _xla_cache_dir = tempfile.mkdtemp(prefix="limubert-tests-xla-cache-")
    settings = {"jax_compilation_cache_dir": shared, **_SESSION_SETTINGS}
    flags = os.environ.get("XLA_FLAGS", "")
    if _SESSION_XLA_FLAGS not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {_SESSION_XLA_FLAGS}".strip()
    os.environ[_XLA_FLAGS_OWNER] = _SESSION_XLA_FLAGS
    os.environ.update({name.upper(): str(value).lower() for name, value in settings.items()}, **{_OWNER: shared})
    if "jax" in sys.modules:  # imported before this hook (by a plugin): too late for the environment
        import jax

        for name, value in settings.items():
            jax.config.update(name, value)
    # The tests run on one CPU device in this process (those of other counts start their own).
    # Pinned, not inherited by the children: a test that calls the main job first would
    # otherwise split the cores into devices for every test after it (`runtime.cpu_devices`).
    import jax

    jax.config.update("jax_num_cpu_devices", 1)


def pytest_unconfigure(config):
    for folder in (_xla_cache_dir, _pycache_dir):
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
