"""XLA compiler options for programs whose compile time outweighs their run time."""

from __future__ import annotations

import functools

import jax


@functools.cache
def run_once_compiler_options() -> dict[str, int]:
    """Options for a small program that runs once (parameter initialisation): no backend
    (LLVM) optimisation, which on XLA:CPU cuts its compile time to about a third.

    Empty where this XLA rejects the option, so callers may pass it unconditionally.
    """
    options = {"xla_backend_optimization_level": 0}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(1.0).compile()
    except Exception:  # noqa: BLE001  (an unknown option is an INVALID_ARGUMENT at compile time)
        return {}
    return options


def compile_once(fn):
    """`fn` jitted with `run_once_compiler_options()`. Called while another program is being
    traced, `fn` is traced into that program instead (compiler options belong to the
    outermost program only)."""
    jitted = jax.jit(fn, compiler_options=run_once_compiler_options())

    def call(*args):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)):
            return fn(*args)
        return jitted(*args)

    return call
