"""Parameter initialisers: ``init(key, shape, dtype=float32, *, groups=1) -> array``.

Fans follow the layouts fcnn uses: a dense weight ``(in, out)`` has fan_in = in, fan_out = out;
an HWIO kernel ``(kh, kw, C_in // groups, C_out)`` has fan_in = kh*kw*C_in/groups (what one
output sums over) and fan_out = kh*kw*C_out/groups (what one input feeds).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fcnn import _args


def fans(shape, groups: int = 1) -> tuple[float, float]:
    """`(fan_in, fan_out)` of a weight of `shape` (1-D: both are its length)."""
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"fans: a weight needs at least one axis, got shape {shape}.")
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(receptive * shape[-2]), float(receptive * shape[-1] / groups)


def he_normal():
    """Normal with std `sqrt(2 / fan_in)` (He et al. 2015, "Delving deep into rectifiers"):
    keeps ReLU activations' variance constant through depth."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, _ = fans(shape, groups)
        return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / fan_in).astype(dtype)

    return init


def glorot_uniform():
    """Uniform on `[-a, a]` with `a = sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010)."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, fan_out = fans(shape, groups)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


def glorot_normal():
    """Normal with std `sqrt(2 / (fan_in + fan_out))`."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, fan_out = fans(shape, groups)
        return jax.random.normal(key, shape, dtype) * math.sqrt(2.0 / (fan_in + fan_out))

    return init


def normal(std: float = 0.01):
    """Normal with a fixed standard deviation `std` (a finite float >= 0)."""
    std = _args.as_float(std, "init.normal", "std", minimum=0)

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        return jax.random.normal(key, shape, dtype) * std

    return init


def constant(value: float):
    """Every element equal to `value` (a finite float)."""
    value = _args.as_float(value, "init.constant", "value")

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        return jnp.full(shape, value, dtype)

    return init


def zeros():
    """All zeros (the default for biases)."""
    return constant(0.0)
