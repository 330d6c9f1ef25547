"""Pixel shuffle as JAX primitives with hand-written JVP, transpose and batching rules (the
"primitive" binding; `fcnn.ops._binding`). The computations are shuffle.py's:

    shuffle(x)     a permutation; JVP shuffle(ẋ);     transpose: unshuffle(ct)
    unshuffle(y)   its inverse;   JVP unshuffle(ẏ);   transpose: shuffle(ct)

Batching: a vmapped axis folds into the batch N (both maps act per example).
"""

from __future__ import annotations

from jax.extend.core import Primitive
from jax.interpreters import ad, batching

from fcnn.ops import shuffle as shuffle_mod
from fcnn.ops._bilinear import ShapedArray, front, into_n, out_of_n, register, zero_like, zero_or

shuffle_p = Primitive("fcnn_pixel_shuffle")  # (x; r) -> y
unshuffle_p = Primitive("fcnn_pixel_unshuffle")  # (y; r) -> x


def shuffle(x, r):
    return shuffle_p.bind(x, r=r)


def unshuffle(y, r):
    return unshuffle_p.bind(y, r=r)


def _shuffled(x, *, r):
    d = x.ndim - 2
    return ShapedArray((x.shape[0], *(s * r for s in x.shape[1:-1]), x.shape[-1] // r ** d),
                       x.dtype)


def _unshuffled(y, *, r):
    d = y.ndim - 2
    return ShapedArray((y.shape[0], *(s // r for s in y.shape[1:-1]), y.shape[-1] * r ** d),
                       y.dtype)


register(shuffle_p, lambda x, *, r: shuffle_mod._shuffle_impl(x, r), _shuffled, ("r",))
register(unshuffle_p, lambda y, *, r: shuffle_mod._unshuffle_impl(y, r), _unshuffled, ("r",))


def _linear_jvp(bind):
    def jvp(primals, tangents, *, r):
        out = bind(primals[0], r=r)
        t = tangents[0]
        return out, zero_like(out) if type(t) is ad.Zero else bind(t, r=r)

    return jvp


ad.primitive_jvps[shuffle_p] = _linear_jvp(shuffle_p.bind)
ad.primitive_jvps[unshuffle_p] = _linear_jvp(unshuffle_p.bind)
ad.primitive_transposes[shuffle_p] = lambda ct, x, *, r: [
    zero_or(ct, x, lambda: unshuffle(ct, r))]
ad.primitive_transposes[unshuffle_p] = lambda ct, y, *, r: [
    zero_or(ct, y, lambda: shuffle(ct, r))]


def _batcher(bind):
    def rule(args, dims, *, r):
        (a,), (d,) = args, dims
        a = front(a, d)
        return out_of_n(bind(into_n(a), r=r), a.shape[0]), 0

    return rule


batching.primitive_batchers[shuffle_p] = _batcher(shuffle_p.bind)
batching.primitive_batchers[unshuffle_p] = _batcher(unshuffle_p.bind)
