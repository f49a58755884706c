"""The commands' persistent XLA compilation cache: a rerun loads its programs instead of
compiling them.

Compiling the train step takes ~10 s on a laptop CPU, longer than a short run's training; the
compiled programs depend only on the config, the shapes, the package and the JAX version, so
every command keeps them in a folder JAX owns:

* `$LIMUBERT_XLA_CACHE` when set (`off` turns the cache off),
* else `$XDG_CACHE_HOME/limubert_jax/xla` (default `~/.cache/limubert_jax/xla`),

capped at `MAX_BYTES`, least recently used programs evicted first. A cache the user (or a
test session) already chose through JAX, `JAX_COMPILATION_CACHE_DIR` or
`jax.config.update("jax_compilation_cache_dir", ...)`, is left as it is. JAX keys each entry
by the program's HLO, compile options, backend and versions, so a changed package or JAX never
loads a stale program, and a loaded executable computes what the compiled one did.

Library calls (`import limubert_jax` in a notebook) do not touch JAX's settings; only the
commands call `enable`.
"""

from __future__ import annotations

import os

import jax
from absl import logging
from etils import epath

ENV = "LIMUBERT_XLA_CACHE"
OFF = "off"
MAX_BYTES = 2 << 30
# Every program is kept, the tiny eager ones too (an index, a concatenate): a run compiles a few
# dozen of them, ~30 ms each, which adds up to a second of a rerun's startup.
MIN_COMPILE_SECONDS = 0.0


def default_dir() -> epath.Path:
    """`$XDG_CACHE_HOME/limubert_jax/xla`, `~/.cache/limubert_jax/xla` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return epath.Path(base) / "limubert_jax" / "xla"


def enable() -> str | None:
    """Points JAX's persistent compilation cache at the commands' folder (module docstring),
    unless a cache is already configured or `$LIMUBERT_XLA_CACHE` is `off`. Returns the folder
    in use, None when there is none. Call before the first compilation."""
    configured = jax.config.jax_compilation_cache_dir
    if configured:
        return str(configured)
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() == OFF:
        return None
    path = epath.Path(setting) if setting else default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a read-only home: the run compiles as it would without a cache
        logging.warning("no compilation cache: cannot create %s (%s); set %s to a writable folder or %s",
                        path, e, ENV, OFF)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Settings the user gave JAX through its environment variables stay theirs.
    for name, value in (("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS),
                        ("jax_compilation_cache_max_size", MAX_BYTES)):  # eviction locks with `filelock`
        if name.upper() not in os.environ:
            jax.config.update(name, value)
    return str(path)
