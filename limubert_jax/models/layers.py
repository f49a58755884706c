"""Building blocks shared by the encoder and the heads: PyTorch's default initialisers and a
`Linear` layer initialised as `nn.Linear` is, and `dataclass_from_dict` for the frozen
config dataclasses."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from limubert_jax.runtime.precision import dot


def dataclass_from_dict(cls, fields: dict[str, Any]):
    """`cls(**fields)` for a config dataclass, naming unknown fields instead of a TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}")
    return cls(**fields)


def torch_uniform(fan_in: int):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): PyTorch's default init of linear and conv biases and of
    conv weights."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Linear(nn.Module):
    """`x @ kernel + bias`, initialised like PyTorch's `nn.Linear` (the reference trains from that).

    kernel: [in, out], the transpose of PyTorch's weight.
    """

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = linear_params(self, x.shape[-1], self.features)
        return linear({"kernel": kernel, "bias": bias}, x)


def linear_params(module: nn.Module, fan_in: int, features: int) -> tuple[jax.Array, jax.Array]:
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's kaiming_uniform(a=sqrt(5)).
    kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    kernel = module.param("kernel", kernel_init, (fan_in, features))
    bias = module.param("bias", torch_uniform(fan_in), (features,))
    return kernel, bias


def linear(p, x: jax.Array) -> jax.Array:
    """`Linear` as a function of its parameters {kernel, bias}."""
    return dot(x, p["kernel"]) + p["bias"]
