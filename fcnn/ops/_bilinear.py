"""What every fcnn primitive shares: registration, the members axis, shape rules, the product
rule of a bilinear map, symbolic-zero cotangents, and batching helpers (`convolution.primitives`,
`_dense_primitives`, `_pool_primitives`).

A primitive's parameters include `members`: 0, or K when both operands and the result carry a
leading axis of K independent problems — what a batching rule makes of a vmap over many of
them. The computation runs the K problems in a loop or with JAX's vmap of the single-problem
computation (`each`), inside the primitive only: transformations see the primitive and fcnn's
rules.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax.interpreters import ad, mlir

from fcnn.ops import tuning

# resolved at import: a JAX without them falls back to the custom_vjp binding (_binding)
ShapedArray = jax.core.ShapedArray
typeof = jax.typeof
# Up to this many members sharing no operand run one primitive each: each with its own
# algorithms, never a grouped convolution (measured for ensembles, docs/performance.md).
UNROLL_MAX = 16


def register(p, compute, abstract_eval, static, wrap_lowering=None):
    """`compute(*operands, **params)` as primitive `p`'s computation: its eager implementation
    (compiled once per configuration of the `static` parameters) and its lowering (inlined
    into the caller's program under jit, through `wrap_lowering(rule)` if given);
    `abstract_eval` gives its output's shape and dtype."""
    p.def_impl(jax.jit(compute, static_argnames=static))
    rule = mlir.lower_fun(compute, multiple_results=False)
    mlir.register_lowering(p, wrap_lowering(rule) if wrap_lowering else rule)
    p.def_abstract_eval(abstract_eval)


def zero_like(out):
    """A symbolic zero tangent for the primal output `out`."""
    return ad.Zero(typeof(out).to_tangent_aval())


def each(compute, loop_batches=False, together=None):
    """`compute` of one problem, or of each of `members` problems (their leading axis), inside
    this primitive's computation only: no transformation sees how (they see the primitive and
    its rules). JAX's vmap of the computation runs them, except, with `loop_batches` (the
    convolutions), members whose first operand holds a batch of more than one example (an
    ensemble): up to UNROLL_MAX of them `together(a, b, one, **params)` (one native call over
    all, or each problem as its own computation), more in a loop, each member's problem as its
    own computation — vmap would make it a grouped convolution, XLA:CPU's slow path
    (docs/performance.md). Per-example problems (one example each: per-example dK) stay with
    vmap, which makes batched matrix products of them."""

    def run(a, b, *, members, **params):
        one = partial(compute, **params)
        if not members:
            return one(a, b)
        if loop_batches and a.shape[1] > 1:
            if together is not None and members <= UNROLL_MAX:
                return together(a, b, one, **params)
            return jax.lax.map(lambda ab: one(*ab), (a, b))
        with tuning.vectorised():
            return jax.vmap(one)(a, b)

    return run


def shape_rule(one):
    """The abstract eval of a primitive whose single-problem output shape is `one(a, b, ...)`."""

    def rule(a, b, *, members, **params):
        lead = a.shape[:1] if members else ()
        core = (a.shape[1:], b.shape[1:]) if members else (a.shape, b.shape)
        return ShapedArray((*lead, *one(*core, **params)), a.dtype)

    return rule


def bilinear_jvp(bind):
    """The product rule of a bilinear map `bind(a, b)`: `bind(a', b) + bind(a, b')`."""

    def jvp(primals, tangents, **params):
        a, b = primals
        da, db = tangents
        out = bind(a, b, **params)
        terms = [bind(da, b, **params)] if type(da) is not ad.Zero else []
        if type(db) is not ad.Zero:
            terms.append(bind(a, db, **params))
        if not terms:
            return out, zero_like(out)
        return out, terms[0] if len(terms) == 1 else terms[0] + terms[1]

    return jvp


def zero_or(ct, operand, make):
    """The cotangent for a linear `operand`: `make()`, or a symbolic zero when `ct` is one."""
    return ad.Zero(operand.aval) if type(ct) is ad.Zero else make()


def front(a, dim):
    """`a` with its mapped axis first."""
    return jnp.moveaxis(a, dim, 0)


def into_n(a):
    """(K, N, ...) -> (K*N, ...)."""
    return a.reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def out_of_n(a, k):
    return a.reshape(k, a.shape[0] // k, *a.shape[1:])


def mapped(a, dim, k):
    """`a` with a leading axis of K: its mapped axis moved first, or broadcast when unmapped."""
    return jnp.broadcast_to(a, (k, *a.shape)) if dim is None else front(a, dim)


def independent(bind, a, da, b, db, members, unroll=True, together=False):
    """`bind(a_i, b_i, members)` for the K independent problems of a vmapped axis (`da`, `db`:
    where it is in each operand; None: shared). Up to UNROLL_MAX of them (when `unroll`) run
    one `bind` each — or, with `together`, both operands mapped and a batch of more than one
    example in each problem's first operand, one `bind` with a members axis, whose computation
    runs them together (`each`); more become one `bind` with a members axis, merged with an
    existing one."""
    k = (a.shape[da] if da is not None else b.shape[db])
    if together and da is not None and db is not None and front(a, da).shape[1] > 1:
        unroll = False  # members with a batch each (an ensemble), run together by `each`
    if unroll and not members and 0 < k <= UNROLL_MAX:
        a, b = (a if da is None else front(a, da)), (b if db is None else front(b, db))
        return jnp.stack([bind(a if da is None else a[i], b if db is None else b[i], 0)
                          for i in range(k)])
    a, b = mapped(a, da, k), mapped(b, db, k)
    if not members:
        return bind(a, b, k)
    merged = bind(into_n(a), into_n(b), k * members)  # (K, M, ...) -> (K*M, ...)
    return out_of_n(merged, k)


def linear_pair(name, name_t, compute, compute_t, shape, shape_t, param):
    """Two primitives for a map linear in its one operand and its transpose, both configured by
    the static parameter `param` (pad and fold, shuffle and unshuffle, upsample and its
    transpose): each one's JVP is itself, each is the other's transpose, and a vmapped axis
    folds into the batch N (both act per example). `compute(a, value)` and `shape(a, value)`
    give each map's result and its shape. Returns the two bind functions `(a, value) -> out`."""
    from jax.extend.core import Primitive
    from jax.interpreters import batching

    p, p_t = Primitive(name), Primitive(name_t)
    for prim, fn, out in ((p, compute, shape), (p_t, compute_t, shape_t)):
        register(prim, lambda a, fn=fn, **k: fn(a, k[param]),
                 lambda a, out=out, **k: ShapedArray(out(a, k[param]), a.dtype), (param,))

    def bind(prim):
        return lambda a, value: prim.bind(a, **{param: value})

    def jvp(prim):
        def rule(primals, tangents, **k):
            out, t = prim.bind(primals[0], **k), tangents[0]
            return out, zero_like(out) if type(t) is ad.Zero else prim.bind(t, **k)
        return rule

    def transpose(other):
        return lambda ct, a, **k: [zero_or(ct, a, lambda: other.bind(ct, **k))]

    def fold(prim):
        def rule(args, dims, **k):
            a = front(args[0], dims[0])  # (K, N, ...) -> (K*N, ...), mapped, and back
            return out_of_n(prim.bind(into_n(a), **k), a.shape[0]), 0
        return rule

    for prim, other in ((p, p_t), (p_t, p)):
        ad.primitive_jvps[prim] = jvp(prim)
        ad.primitive_transposes[prim] = transpose(other)
        batching.primitive_batchers[prim] = fold(prim)
    return bind(p), bind(p_t)
