"""The commands' persistent compilation cache (`limubert_jax.runtime.compilation_cache`)."""

import os
import subprocess
import sys

import jax
import pytest

from limubert_jax.runtime import compilation_cache

# Runs in a child without the test session's cache: enables the commands' cache as the
# environment says, compiles one program, and prints the folder, its entries and the hits.
_SCRIPT = """
import os, sys
import jax, jax.numpy as jnp
from limubert_jax.runtime import compilation_cache
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
folder = compilation_cache.enable()
jax.jit(lambda x: x * 2.0 + 1.0)(jnp.arange(3.0)).block_until_ready()
entries = len(os.listdir(folder)) if folder else 0
print(folder, entries, len(hits), jax.config.jax_persistent_cache_min_compile_time_secs)
"""


def _run(tmp_path, **env_overrides) -> list[str]:
    env = {k: v for k, v in os.environ.items()
           if (not k.startswith("JAX_") or k == "JAX_PLATFORMS") and k != compilation_cache.ENV}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), **env_overrides)
    result = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_a_rerun_loads_what_the_first_run_compiled_from_the_default_folder(tmp_path):
    folder = str(tmp_path / "xdg" / "limubert_jax" / "xla")
    first = _run(tmp_path)
    assert first[0] == folder and int(first[1]) >= 1 and first[2] == "0"
    assert float(first[3]) == compilation_cache.MIN_COMPILE_SECONDS
    second = _run(tmp_path)
    assert second[0] == folder and int(second[2]) >= 1  # loaded, not compiled


@pytest.fixture
def unconfigured(monkeypatch, tmp_path):
    """This process as a user's command starts it: no cache configured through JAX, none of the
    cache's environment variables; JAX's settings are put back afterwards (nothing compiles
    meanwhile, so the session's cache is never switched)."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
             "jax_compilation_cache_max_size")
    saved = {name: getattr(jax.config, name) for name in names}
    for name in (compilation_cache.ENV, *(n.upper() for n in names)):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    jax.config.update("jax_compilation_cache_dir", None)
    yield monkeypatch
    for name, value in saved.items():
        jax.config.update(name, value)


def test_the_environment_variable_moves_or_turns_off_the_cache(unconfigured, tmp_path):
    unconfigured.setenv(compilation_cache.ENV, "off")
    assert compilation_cache.enable() is None and jax.config.jax_compilation_cache_dir is None
    unconfigured.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
    assert compilation_cache.enable() == str(tmp_path / "mine") == jax.config.jax_compilation_cache_dir
    assert (tmp_path / "mine").is_dir() and not (tmp_path / "xdg").exists()
    assert jax.config.jax_compilation_cache_max_size == compilation_cache.MAX_BYTES


def test_jax_settings_from_the_environment_stay_the_users(unconfigured):
    unconfigured.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "5")
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 5.0)  # as JAX read it at import
    assert compilation_cache.enable() == str(compilation_cache.default_dir())
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 5.0


def test_a_cache_configured_through_jax_is_left_alone():
    configured = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    assert configured
    assert compilation_cache.enable() == configured
    assert jax.config.jax_compilation_cache_dir == configured
