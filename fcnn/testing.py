"""Gradient checking for users' own ops: compare value and VJP against a reference function.

fcnn's own suite proves every rule with these (docs/correctness.md: the oracle, the tolerances
and why they are relative to each array's scale).
"""

from __future__ import annotations

import inspect
import re

import jax
import jax.numpy as jnp
import numpy as np

# Scale-relative tolerances per dtype: |got - want| <= atol + rtol * max|want| over each array.
# Sums of products cancel, so an element-wise relative bound would fail near zero for any
# correct rule; the array's scale is what float rounding errors are proportional to.
TOLERANCES = {
    np.dtype(np.float64): (1e-10, 1e-12),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(jnp.float16): (1e-2, 1e-3),
    np.dtype(jnp.bfloat16): (2e-2, 1e-2),
}


def rule_bindings(fn, *args) -> int:
    """How many of fcnn's hand-written rules `fn(*args)` binds: the custom_vjp and custom_jvp
    calls and fcnn's primitives (`fcnn_conv`, ...) in its jaxpr, traced afresh. 0 means nothing
    of fcnn's runs (e.g. a model after `fcnn.layers.with_ops(model, fcnn.reference)`)."""
    text = str(jax.make_jaxpr(lambda *a: fn(*a))(*args))  # a new function: no cached trace
    return len(re.findall(r"\bcustom_(?:vjp|jvp)_call\[|\bfcnn_\w+\[", text))


def tolerance(dtype, rtol=None, atol=None) -> tuple[float, float]:
    """The `(rtol, atol)` for `dtype` from `TOLERANCES`, overridden by the arguments given."""
    default = TOLERANCES.get(np.dtype(dtype), TOLERANCES[np.dtype(np.float32)])
    return (default[0] if rtol is None else rtol, default[1] if atol is None else atol)


def assert_close(got, want, what: str, rtol=None, atol=None) -> None:
    """Assert two arrays agree (shape, dtype, values); the message names `what` and the worst
    element (index, both values, the error and the bound)."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape} != reference {want.shape}")
    if got.dtype != want.dtype:
        raise AssertionError(f"{what}: dtype {got.dtype} != reference {want.dtype}")
    if got.size == 0:
        return
    rtol, atol = tolerance(got.dtype, rtol, atol)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w64)
    # Non-finite values must match exactly: NaN where the reference has NaN (NaN != NaN, so
    # compared with isnan), an infinity of the same sign where it has one.
    same = (np.isfinite(g64) & finite) | (np.isnan(g64) & np.isnan(w64)) | (g64 == w64)
    if not same.all():
        bad = tuple(int(i) for i in np.unravel_index(np.argmax(~same), got.shape))
        raise AssertionError(
            f"{what}: non-finite values differ, first at index {bad}: "
            f"got {got[bad]}, reference {want[bad]}"
        )
    err = np.zeros(got.shape)
    err[finite] = np.abs(g64[finite] - w64[finite])  # g64 is finite there: `same` held
    bound = atol + rtol * (np.max(np.abs(w64[finite])) if finite.any() else 0.0)
    worst = np.unravel_index(np.argmax(err), err.shape)
    if err[worst] > bound:
        raise AssertionError(
            f"{what}: worst element at index {tuple(int(i) for i in worst)}: got {g64[worst]!r}, "
            f"reference {w64[worst]!r}, |error| {err[worst]:.3e} > bound {bound:.3e} "
            f"(atol {atol:g} + rtol {rtol:g} * max|reference|); "
            f"{int(np.sum(err > bound))} of {err.size} elements out of tolerance"
        )


def _names(fn, n):
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY,
                                                  params[i].POSITIONAL_OR_KEYWORD):
            names.append(f"argument {i} (`{params[i].name}`)")
        else:
            names.append(f"argument {i}")
    return names


def _differentiated(args, names):
    """Flatten `args` and pick the leaves check_vjp differentiates: floating-point arrays.

    Returns the flat leaves, their treedef, the indices of the differentiated leaves and a
    name for each (`argument 0 (`params`)['w']`). Raises TypeError on a Python float."""
    with_paths, treedef = jax.tree_util.tree_flatten_with_path(tuple(args))
    diff, labels = [], {}
    for j, (path, leaf) in enumerate(with_paths):
        label = names[path[0].idx] + jax.tree_util.keystr(path[1:])
        if hasattr(leaf, "dtype"):
            if jnp.issubdtype(leaf.dtype, jnp.inexact):
                diff.append(j)
                labels[j] = label
        elif isinstance(leaf, (float, complex)):
            raise TypeError(
                f"check_vjp: {label} is a Python {type(leaf).__name__} ({leaf!r}), which could "
                f"be an input to differentiate or a constant. Pass jnp.asarray({leaf!r}) to "
                f"differentiate it, or bind it inside `fn` and `reference_fn` (a lambda or "
                f"functools.partial) to hold it fixed."
            )
    return [leaf for _, leaf in with_paths], treedef, diff, labels


def check_vjp(
    fn, reference_fn, *args, rtol=None, atol=None, seed: int = 0, jit: bool = True
) -> None:
    """Check that `fn` matches `reference_fn` in value and in its VJP.

    Both are called on `args`; outputs (any pytree) are compared, then the VJPs of both are
    applied to the same random normal cotangent and the gradients with respect to every
    floating-point array are compared. Cotangents must have the primal's shape and dtype.

    Which arguments are differentiated:
      - floating-point arrays (jax or numpy, scalars included), alone or as leaves of a pytree
        argument (a list of arrays, a params dict `{"w", "b"}`): every one, each gradient
        named by argument and path, e.g. ``gradient of argument 0 (`params`)['w']``;
      - held fixed: integer, boolean and PRNG-key arrays (labels, keys), Python ints and bools,
        strings, None, and the integer leaves of a pytree (shapes);
      - refused: a Python float or complex (alone or in a pytree) raises a TypeError naming
        it, since it may be a constant (a rate, a slope) or an input: pass `jnp.asarray(v)` to
        differentiate it, or bind it inside both functions to hold it fixed.

    Example:
      >>> check_vjp(ops.conv2d, reference.conv2d, x, w)
      >>> check_vjp(lambda x, w: ops.conv2d(x, w, stride=2), lambda x, w: ..., x, w)
      >>> check_vjp(lambda p, x: ops.dense(x, p["w"], p["b"]), ..., {"w": w, "b": b}, x)

    Args:
      fn: the function under test.
      reference_fn: the oracle (e.g. the same maths in plain `lax` under autodiff).
      *args: positional arguments for both.
      rtol, atol: override the per-dtype `TOLERANCES` (bounds relative to each array's scale).
      seed: seed of the random cotangents.
      jit: compile each side (value and VJP) as one program; set False for functions that
        cannot be traced under `jax.jit`.

    Raises:
      AssertionError: naming the output or argument and the worst element.
      TypeError: an argument (or a leaf of one) is a Python float or complex.
    """
    flat, treedef, diff, labels = _differentiated(args, _names(fn, len(args)))

    def restrict(f):
        def g(*d):
            full = list(flat)
            for j, v in zip(diff, d, strict=True):
                full[j] = v
            return f(*jax.tree_util.tree_unflatten(treedef, full))

        return g

    primals = [flat[j] for j in diff]
    out_shapes = jax.eval_shape(restrict(fn), *primals)
    leaves, tree = jax.tree_util.tree_flatten(out_shapes)
    rng = np.random.default_rng(seed)  # numpy: no compilation per cotangent shape
    ct = jax.tree_util.tree_unflatten(
        tree, [jnp.asarray(rng.standard_normal(a.shape), a.dtype) for a in leaves]
    )

    def value_and_vjp(f):
        def run(primals, ct):
            out, vjp = jax.vjp(f, *primals)
            return out, vjp(ct)

        return (jax.jit(run) if jit else run)(primals, ct)

    out, grads = value_and_vjp(restrict(fn))
    ref_out, ref_grads = value_and_vjp(restrict(reference_fn))
    leaves, tree = jax.tree_util.tree_flatten(out)
    ref_leaves, ref_tree = jax.tree_util.tree_flatten(ref_out)
    if tree != ref_tree:
        raise AssertionError(f"output structure {tree} != reference {ref_tree}")
    for k, (a, b) in enumerate(zip(leaves, ref_leaves, strict=True)):
        assert_close(a, b, f"output {k}" if len(leaves) > 1 else "output", rtol, atol)
    for j, p, g, r in zip(diff, primals, grads, ref_grads, strict=True):
        p = jnp.asarray(p)
        if g.shape != p.shape or g.dtype != p.dtype:
            raise AssertionError(
                f"gradient of {labels[j]}: cotangent {g.shape} {g.dtype} does not match the "
                f"primal {p.shape} {p.dtype}"
            )
        assert_close(g, r, f"gradient of {labels[j]}", rtol, atol)
