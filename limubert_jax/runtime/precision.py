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

Reduced precision can also be emulated where the hardware computes full float32 (XLA:CPU):
inside `emulate_operand_rounding(mantissa_bits)` every `dot` and `einsum` rounds its float32
operands to `mantissa_bits` (TF32: 10, one bfloat16 pass: 7), forward and backward, and
accumulates in float32, which is what a TF32 unit or a bfloat16 pass does to its inputs.
Every matmul of the package goes through `dot` or `einsum`, so the scope covers them all
(`benchmarks/accelerator_check.py` measures training with it; tests/test_precision.py
checks the lowered programs). Convolutions (the CNN classifier heads) are not rounded.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

# config.train.matmul_precision values (JAX's names) -> what they compute on accelerators.
MATMUL_PRECISIONS = {
    "highest": "full float32, as the reference (6 bfloat16 passes on TPU)",
    "high": "TF32 on NVIDIA GPUs, 3 bfloat16 passes on TPU",
    "default": "the backend's fastest: TF32 on NVIDIA GPUs, 1 bfloat16 pass on TPU",
}

# Mantissa bits of the inputs that reduced-precision matmul units compute with.
TF32_MANTISSA_BITS = 10  # NVIDIA TF32 (matmul precision "default"/"high" on GPUs)
BFLOAT16_MANTISSA_BITS = 7  # one bfloat16 pass (matmul precision "default" on TPUs)


class _Setting:
    """A process-wide value set for a scope: the fallback for JAX releases without
    `jax.make_user_context` (there, a program jitted outside the scope is reused inside it)."""

    def __init__(self, value):
        self.value = value

    @contextlib.contextmanager
    def __call__(self, value):
        saved, self.value = self.value, value
        try:
            yield
        finally:
            self.value = saved


# The active `emulate_operand_rounding` scope's mantissa bits (None: none). A jit-cache-sensitive
# context: a program traced outside the scope is never reused inside it, nor the reverse.
_OPERAND_ROUNDING = jax.make_user_context(None) if hasattr(jax, "make_user_context") else _Setting(None)


def dot_precision() -> lax.Precision | None:
    """The `precision=` of the package's matmuls and convolutions: HIGHEST, or None (the
    active `jax.default_matmul_precision` applies) inside such a scope. Read at trace time."""
    return None if jax.config.jax_default_matmul_precision is not None else lax.Precision.HIGHEST


def dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.dot` at `dot_precision()` (its operands rounded inside `emulate_operand_rounding`)."""
    return _maybe_rounded(functools.partial(jnp.dot, precision=dot_precision()))(a, b)


def einsum(subscripts: str, *operands: jax.Array) -> jax.Array:
    """`jnp.einsum` at `dot_precision()` (its operands rounded inside `emulate_operand_rounding`)."""
    return _maybe_rounded(functools.partial(jnp.einsum, subscripts, precision=dot_precision()))(*operands)


def emulate_operand_rounding(mantissa_bits: int) -> contextlib.AbstractContextManager:
    """A scope in which every `dot` and `einsum` of the package (so every matmul it traces)
    rounds its float32 operands to `mantissa_bits` mantissa bits and 8 exponent bits
    (`lax.reduce_precision`) before multiplying; products accumulate in float32. Gradients
    too: the backward pass's matmuls round their operands, the incoming cotangent included.
    `TF32_MANTISSA_BITS` (10) emulates a TF32 unit, `BFLOAT16_MANTISSA_BITS` (7) one bfloat16
    pass, on any backend (XLA:CPU always computes full float32). Read at trace time: enter it
    around the call (or `.lower()`) of a jitted function, which then traces anew for it."""
    if not isinstance(mantissa_bits, int) or not 0 < mantissa_bits < 23:
        raise ValueError(f"mantissa_bits {mantissa_bits!r}: an integer from 1 to 22 (float32 has 23)")
    return _OPERAND_ROUNDING(mantissa_bits)


def operand_rounding() -> int | None:
    """The active `emulate_operand_rounding` scope's mantissa bits, None outside one."""
    return _OPERAND_ROUNDING.value


def round_operand(x: jax.Array, mantissa_bits: int) -> jax.Array:
    """A float32 `x` rounded to `mantissa_bits` (8 exponent bits, round to nearest even), as a
    reduced-precision matmul unit reads it; any other dtype unchanged."""
    if jnp.result_type(x) != jnp.float32:
        return x
    return lax.reduce_precision(x, exponent_bits=8, mantissa_bits=mantissa_bits)


def _maybe_rounded(matmul: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """`matmul` itself outside `emulate_operand_rounding`; inside, `matmul` of the rounded
    operands, whose backward pass runs `matmul`'s own vjp on rounded cotangents (autodiff
    alone would leave them unrounded, and round the backward matmuls' results instead)."""
    bits = operand_rounding()
    if bits is None:
        return matmul

    def rounded(*operands):
        return matmul(*(round_operand(x, bits) for x in operands))

    def forward(*operands):
        return jax.vjp(matmul, *(round_operand(x, bits) for x in operands))

    def backward(vjp, cotangent):
        return vjp(round_operand(cotangent, bits))

    emulated = jax.custom_vjp(rounded)
    emulated.defvjp(forward, backward)
    return emulated


def check_matmul_precision(name: str) -> str:
    """`name` if it is one of MATMUL_PRECISIONS, else a ValueError listing them."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul_precision {name!r}: use one of {', '.join(MATMUL_PRECISIONS)}")
    return name


def matmul_precision(name: str) -> contextlib.AbstractContextManager:
    """A scope in which the package's matmuls compute at `name` (see MATMUL_PRECISIONS).
    Entered inside a traced function, it applies to what that function traces."""
    return jax.default_matmul_precision(check_matmul_precision(name))
