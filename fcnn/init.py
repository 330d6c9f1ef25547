"""Parameter initialisers: ``init(key, shape, dtype=float32, *, groups=1) -> array``.

Fans follow the layouts fcnn uses: a dense weight ``(in, out)`` has fan_in = in, fan_out = out;
an HWIO kernel ``(kh, kw, C_in // groups, C_out)`` has fan_in = kh*kw*C_in/groups (what one
output sums over) and fan_out = kh*kw*C_out/groups (what one input feeds).
"""

from __future__ import annotations

import contextlib
import math
import threading

import jax
import jax.numpy as jnp
import numpy as np

from fcnn import _args

_DRAWS = threading.local()  # .plan: the init being traced for one compiled program (`together`)


def split(key, num: int = 2) -> tuple:
    """`jax.random.split(key, num)` as a tuple of `num` keys: the one place a layer's init
    splits its key (inside `together`, the split is recorded, then served from a batch)."""
    plan = getattr(_DRAWS, "plan", None)
    if plan is None:
        return tuple(jax.random.split(key, num))
    return plan.split(key, num)


def _random(kind: str, key, shape, dtype, *bounds):
    """`jax.random.<kind>(key, shape, dtype, *bounds)`, the one place fcnn's initialisers
    draw (inside `together`, the draw is recorded, then served from a batch of its kind)."""
    plan = getattr(_DRAWS, "plan", None)
    if plan is None:
        return getattr(jax.random, kind)(key, shape, dtype, *bounds)
    return plan.draw(kind, key, tuple(shape), np.dtype(dtype), bounds)


@contextlib.contextmanager
def _planned(plan):
    previous = getattr(_DRAWS, "plan", None)
    _DRAWS.plan = plan
    try:
        yield
    finally:
        _DRAWS.plan = previous


class _Record:
    """The first pass of `together`: each split and draw in order, and where its key came
    from (`None`: the root key; `(i, j)`: output j of split i; "?": a key made elsewhere)."""

    def __init__(self, root):
        self.splits, self.draws = [], []
        self.origin, self.alive = {id(root): None}, [root]  # alive: ids stay unique

    def split(self, key, num):
        out = tuple(jax.random.split(key, num))
        self.splits.append((self.origin.get(id(key), "?"), num))
        for j, k in enumerate(out):
            self.origin[id(k)] = (len(self.splits) - 1, j)
        self.alive += out
        return out

    def draw(self, kind, key, shape, dtype, bounds):
        self.draws.append((self.origin.get(id(key), "?"), (kind, shape, dtype, bounds)))
        return jnp.zeros(shape, dtype)


class _Replay:
    """The second pass: the same splits and draws served, in order, from the batches."""

    def __init__(self, splits, draws):
        self.splits, self.draws = iter(splits), iter(draws)

    def split(self, key, num):
        want, keys = next(self.splits, (None, None))
        return keys if keys is not None and want == num else tuple(jax.random.split(key, num))

    def draw(self, kind, key, shape, dtype, bounds):
        want, value = next(self.draws, (None, None))
        if value is None or want != (kind, shape, dtype, bounds):
            return getattr(jax.random, kind)(key, shape, dtype, *bounds)
        return value.reshape(shape)


def together(fn):
    """`fn(key, *args)` (a model's init, traced for one compiled program) with the splits and
    draws of fcnn's layers and initialisers made together.

    XLA's compile time grows with every threefry computation it is given: 160 chained
    `jax.random.split` calls alone take 3.7 s to compile, and ResNet-50's init as one program
    compiled slower than op by op. Here each level of the key tree is split in one vmapped
    call per split size, and the draws are one vmapped draw per (kind, size, dtype, bounds)
    over the keys of every parameter of that size: a network's init compiles about as many
    threefry programs as its key tree has levels plus its distinct weight sizes.

    The values are the same bits: a split or draw depends on its key and each element's flat
    index alone (so a `(3, 3, 64, 64)` draw is the `(36864,)` draw reshaped), and `vmap` over
    keys computes each key's as it would alone (tests/test_init.py checks every model).

    `fn` runs twice. The first pass records each split and draw with where its key came from
    (its draws return zeros; the pass's result is discarded and XLA removes what it computed).
    The second pass is served the batched keys and draws in the same order; a split or draw
    whose key the record could not trace (made by a user's initialiser), or that comes out of
    order, is computed on its own."""

    def run(key, *args):
        record = _Record(key)
        with _planned(record):
            fn(key, *args)
        # the key tree, level by level: every split of one level and size in one call
        keys, level = {None: key}, {}
        for i, (parent, _) in enumerate(record.splits):
            if parent is None:
                level[i] = 1
            elif parent != "?" and parent[0] in level:
                level[i] = level[parent[0]] + 1
        batches: dict = {}
        for i, (_, num) in enumerate(record.splits):
            if i in level:
                batches.setdefault((level[i], num), []).append(i)
        for (_, num), members in sorted(batches.items()):
            parents = [keys[record.splits[i][0]] for i in members]
            out = jax.vmap(lambda k, num=num: jax.random.split(k, num))(jnp.stack(parents))
            for m, i in enumerate(members):
                for j in range(num):
                    keys[(i, j)] = out[m, j]
        splits = [(num, tuple(keys[(i, j)] for j in range(num)) if i in level else None)
                  for i, (_, num) in enumerate(record.splits)]
        # the draws: one vmapped draw per kind, size, dtype and bounds
        groups: dict = {}
        for i, (origin, (kind, shape, dtype, bounds)) in enumerate(record.draws):
            if origin in keys:
                groups.setdefault((kind, math.prod(shape), dtype, bounds), []).append(i)
        values = [None] * len(record.draws)
        for (kind, size, dtype, bounds), members in groups.items():
            def draw(k, kind=kind, size=size, dtype=dtype, bounds=bounds):
                return getattr(jax.random, kind)(k, (size,), dtype, *bounds)

            batch = jax.vmap(draw)(jnp.stack([keys[record.draws[i][0]] for i in members]))
            for m, i in enumerate(members):
                values[i] = batch[m]
        draws = [(what, value) for (_, what), value in zip(record.draws, values)]
        with _planned(_Replay(splits, draws)):
            return fn(key, *args)

    return run


def fans(shape, groups: int = 1) -> tuple[float, float]:
    """`(fan_in, fan_out)` of a weight of `shape` (1-D: both are its length)."""
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"fans: a weight needs at least one axis, got shape {shape}.")
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2])
    return float(receptive * shape[-2]), float(receptive * shape[-1] / groups)


def _own(init):
    """Marks an initialiser as fcnn's: its draws go through `_random` (batched and exact inside
    a compiled init). A layer with another initialiser inits op by op (`fcnn.layers`)."""
    init.fcnn_initializer = True
    return init


def owned(*inits) -> bool:
    """Whether every one of `inits` is fcnn's own (None: the layer's default, fcnn's too)."""
    return all(i is None or getattr(i, "fcnn_initializer", False) for i in inits)


def _drawn(values):
    """Random draws kept apart from the scale applied to them. A model's init runs as one
    compiled program (`fcnn.layers`), where XLA would fold `* std` into the `* sqrt(2)` inside
    `jax.random.normal` and round the product once instead of twice: the last bit of a third of
    the weights would then differ from the same draw run op by op (and from every `params
    sha256` quoted before init was compiled). The barrier is free: it only stops that fold."""
    return jax.lax.optimization_barrier(values)


def he_normal():
    """Normal with std `sqrt(2 / fan_in)` (He et al. 2015, "Delving deep into rectifiers"):
    keeps ReLU activations' variance constant through depth."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, _ = fans(shape, groups)
        return _drawn(_random("normal", key, shape, dtype)) * jnp.sqrt(2.0 / fan_in).astype(dtype)

    return _own(init)


def glorot_uniform():
    """Uniform on `[-a, a]` with `a = sqrt(6 / (fan_in + fan_out))` (Glorot & Bengio 2010)."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, fan_out = fans(shape, groups)
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        return _random("uniform", key, shape, dtype, -limit, limit)

    return _own(init)


def glorot_normal():
    """Normal with std `sqrt(2 / (fan_in + fan_out))`."""

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        fan_in, fan_out = fans(shape, groups)
        return _drawn(_random("normal", key, shape, dtype)) * math.sqrt(2.0 / (fan_in + fan_out))

    return _own(init)


def normal(std: float = 0.01):
    """Normal with a fixed standard deviation `std` (a finite float >= 0)."""
    std = _args.as_float(std, "init.normal", "std", minimum=0)

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        return _drawn(_random("normal", key, shape, dtype)) * std

    return _own(init)


def constant(value: float):
    """Every element equal to `value` (a finite float)."""
    value = _args.as_float(value, "init.constant", "value")

    def init(key, shape, dtype=jnp.float32, *, groups=1):
        return jnp.full(shape, value, dtype)

    return _own(init)


def zeros():
    """All zeros (the default for biases)."""
    return constant(0.0)
