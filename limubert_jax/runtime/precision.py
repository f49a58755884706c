"""Matmul precision: full float32 everywhere unless training asks for less.

JAX computes a float32 matmul at the backend's default precision: TF32 on NVIDIA GPUs
(10-bit mantissa inputs) and one bfloat16 pass on TPUs (8 bits), while the reference
PyTorch code computes full float32 on every device. XLA:CPU always computes full float32,
so a CPU test cannot see the difference; the lowered program can (`precision = [HIGHEST,
HIGHEST]` on every `dot_general` and `convolution`, see tests/test_precision.py).

Every matmul, einsum and convolution of the package takes `dot_precision()`: HIGHEST (full
float32 on every backend) unless a `jax.default_matmul_precision` scope is active, which
then decides. Inference, evaluation and the downstream classifiers therefore compute like
the reference wherever they run, called through the CLIs or the public API alike.
Pretraining's train step runs inside `matmul_precision(config.train.matmul_precision)`, so
that field alone chooses what the optimizer steps compute with. Setting JAX's own flag
(`JAX_DEFAULT_MATMUL_PRECISION`) process-wide is an explicit choice and is respected.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
from jax import lax

# config.train.matmul_precision values (JAX's names) -> what they compute on accelerators.
MATMUL_PRECISIONS = {
    "highest": "full float32, as the reference (6 bfloat16 passes on TPU)",
    "high": "TF32 on NVIDIA GPUs, 3 bfloat16 passes on TPU",
    "default": "the backend's fastest: TF32 on NVIDIA GPUs, 1 bfloat16 pass on TPU",
}


def dot_precision() -> lax.Precision | None:
    """The `precision=` of the package's matmuls and convolutions: HIGHEST, or None (the
    active `jax.default_matmul_precision` applies) inside such a scope. Read at trace time."""
    return None if jax.config.jax_default_matmul_precision is not None else lax.Precision.HIGHEST


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.dot` at `dot_precision()`."""
    return jnp.dot(a, b, precision=dot_precision())


def einsum(subscripts: str, *operands: jax.Array) -> jax.Array:
    """`jnp.einsum` at `dot_precision()`."""
    return jnp.einsum(subscripts, *operands, precision=dot_precision())


def check_matmul_precision(name: str) -> str:
    """`name` if it is one of MATMUL_PRECISIONS, else a ValueError listing them."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision {name!r}: use one of {', '.join(MATMUL_PRECISIONS)}")
    return name


def matmul_precision(name: str) -> contextlib.AbstractContextManager:
    """A scope in which the package's matmuls compute at `name` (see MATMUL_PRECISIONS).
    Entered inside a traced function, it applies to what that function traces."""
    return jax.default_matmul_precision(check_matmul_precision(name))
