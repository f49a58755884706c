"""The commands' persistent compilation cache (`limubert_jax.runtime.compilation_cache`)."""

import os
import subprocess
import sys

import jax

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


def test_the_environment_variable_moves_or_turns_off_the_cache(tmp_path):
    assert _run(tmp_path, LIMUBERT_XLA_CACHE=str(tmp_path / "mine"))[0] == str(tmp_path / "mine")
    assert _run(tmp_path, LIMUBERT_XLA_CACHE="off")[:2] == ["None", "0"]
    assert not (tmp_path / "xdg").exists()
    # JAX's own settings, given through its environment, stay the user's.
    assert float(_run(tmp_path, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="5")[3]) == 5.0


def test_a_cache_configured_through_jax_is_left_alone():
    configured = jax.config.jax_compilation_cache_dir  # the test session's (conftest.py)
    assert configured
    assert compilation_cache.enable() == configured
    assert jax.config.jax_compilation_cache_dir == configured
