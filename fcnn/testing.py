"""Gradient checking for users' own ops: compare value and VJP against a reference function.

fcnn's own suite proves every rule with these (docs/correctness.md: the oracle, the tolerances
and why they are relative to each array's scale).
"""

from __future__ import annotations

import dataclasses
import functools
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


def _discrepancy(got, want, rtol=None, atol=None) -> tuple[float, str]:
    """How far `got` is from `want`: `(error / bound, text)`, failing when the ratio exceeds 1
    (infinite for a shape, dtype or non-finite mismatch). The bound is `atol + rtol *
    max|want|` over the finite elements; the text says, for a failure, where and by how much."""
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return np.inf, f"shape {got.shape} != reference {want.shape}"
    if got.dtype != want.dtype:
        return np.inf, f"dtype {got.dtype} != reference {want.dtype}"
    if got.size == 0:
        return 0.0, "empty"
    rtol, atol = tolerance(got.dtype, rtol, atol)
    g64, w64 = got.astype(np.float64), want.astype(np.float64)
    finite = np.isfinite(w64)
    # Non-finite values must match exactly: NaN where the reference has NaN (NaN != NaN, so
    # compared with isnan), an infinity of the same sign where it has one.
    same = (np.isfinite(g64) & finite) | (np.isnan(g64) & np.isnan(w64)) | (g64 == w64)
    if not same.all():
        bad = tuple(int(i) for i in np.unravel_index(np.argmax(~same), got.shape))
        return np.inf, (f"non-finite values differ, first at index {bad}: "
                        f"got {got[bad]}, reference {want[bad]}")
    err = np.zeros(got.shape)
    err[finite] = np.abs(g64[finite] - w64[finite])  # g64 is finite there: `same` held
    bound = atol + rtol * (np.max(np.abs(w64[finite])) if finite.any() else 0.0)
    worst = np.unravel_index(np.argmax(err), err.shape)
    if err[worst] <= bound:
        return (err[worst] / bound if bound else 0.0), \
            f"max |error| {err[worst]:.1e} <= {bound:.1e}"
    return err[worst] / bound if bound else np.inf, (
        f"worst element at index {tuple(int(i) for i in worst)}: got {g64[worst]!r}, "
        f"reference {w64[worst]!r}, |error| {err[worst]:.3e} > bound {bound:.3e} "
        f"(atol {atol:g} + rtol {rtol:g} * max|reference|); "
        f"{int(np.sum(err > bound))} of {err.size} elements out of tolerance")


def assert_close(got, want, what: str, rtol=None, atol=None) -> None:
    """Assert two arrays agree (shape, dtype, values); the message names `what` and the worst
    element (index, both values, the error and the bound)."""
    ratio, why = _discrepancy(got, want, rtol, atol)
    if ratio > 1:
        raise AssertionError(f"{what}: {why}")


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


def _differentiated(args, names, caller="check_vjp"):
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
                f"{caller}: {label} is a Python {type(leaf).__name__} ({leaf!r}), which could "
                f"be an input to differentiate or a constant. Pass jnp.asarray({leaf!r}) to "
                f"differentiate it, or bind it inside `fn` and `reference_fn` (a lambda or "
                f"functools.partial) to hold it fixed."
            )
    return [leaf for _, leaf in with_paths], treedef, diff, labels


def _restrict(flat, treedef, diff, f):
    """`f` as a function of the differentiated leaves alone (the others held at `flat`)."""

    def g(*d):
        full = list(flat)
        for j, v in zip(diff, d, strict=True):
            full[j] = v
        return f(*jax.tree_util.tree_unflatten(treedef, full))

    return g


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
    restrict = functools.partial(_restrict, flat, treedef, diff)
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


# --------------------------------------------------------------------------------------------
# check_op: every derivative of one function, checked every way, in one report.

FD_EPS = 1e-6  # the central-difference step along each (scaled) random direction, in float64
FD_RTOL = 1e-6  # finite differences' bound relative to the derivative's scale
ADJOINT_RTOL = 1e-9  # <u, J v> = <J^T u, v> in float64, relative to the sum of |terms|


@dataclasses.dataclass(frozen=True)
class Check:
    """One line of a `Report`: `status` is "ok", "FAIL" or "skip"; `detail` says what was
    compared and, for a failure, where and by how much (or what raised)."""

    name: str
    status: str
    detail: str


@dataclasses.dataclass(frozen=True)
class Report:
    """What `check_op` checked. `str(report)` is the table; `passed` is True when no check
    failed; `failures` are the failed checks."""

    title: str
    checks: tuple[Check, ...]

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.status == "FAIL")

    @property
    def passed(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        width = max(len(c.name) for c in self.checks)
        rows = [f"  {c.status:<4}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        counts = {s: sum(c.status == s for c in self.checks) for s in ("ok", "FAIL", "skip")}
        summary = (f"{counts['ok']} passed, {counts['FAIL']} failed, {counts['skip']} skipped "
                   f"of {len(self.checks)} checks")
        return "\n".join([self.title, *rows, summary])


class _Unavailable(Exception):
    """A quantity a check needs could not be computed (its error is reported once)."""

    def __init__(self, key):
        super().__init__(key)
        self.key = key


class _Rules:
    """fn's value, VJP, JVP and second-order products on flat lists of arrays (the
    differentiated leaves; outputs flattened), compiled with jit or run eagerly."""

    def __init__(self, f, compile: bool):
        def value(p):
            return jax.tree_util.tree_leaves(f(*p))

        def vjp(p, u):
            return list(jax.vjp(lambda *q: value(q), *p)[1](u))

        def jvp(p, v):
            return jax.jvp(lambda q: value(q), (p,), (v,))[1]

        def rev_rev(p, u, v):  # d/dt VJP(p + t v)(u), by reverse mode: grad <VJP(q)(u), v>
            return jax.grad(lambda q: _inner(vjp(q, u), v))(p)

        def fwd_rev(p, u, v):  # the same by forward mode over the VJP
            return jax.jvp(lambda q: vjp(q, u), (p,), (v,))[1]

        def fwd_fwd(p, v):  # d/dt JVP(p + t v)(v)
            return jax.jvp(lambda q: jvp(q, v), (p,), (v,))[1]

        self.raw = dict(value=value, vjp=vjp, jvp=jvp, rev_rev=rev_rev, fwd_rev=fwd_rev,
                        fwd_fwd=fwd_fwd)
        wrap = jax.jit if compile else (lambda h: h)
        for name, h in self.raw.items():
            setattr(self, name, wrap(h))


def _inner(a, b):
    return sum(jnp.sum(x * y) for x, y in zip(a, b, strict=True))


def _np_inner(a, b):
    return float(sum(np.sum(np.asarray(x, np.float64) * np.asarray(y, np.float64))
                     for x, y in zip(a, b, strict=True)))


def _x64():
    """A context in which float64 arrays stay float64 (JAX's API moved in 0.4.3x)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64  # older JAX

    return enable_x64()


def _worst(parts) -> tuple[float, str]:
    """The worst of `(ratio, text, where)` parts: its ratio and `where: text`."""
    ratio, text, where = max(parts, key=lambda t: t[0])
    return ratio, (f"{where}: {text}" if where else text)


def _worst_localised(parts) -> tuple[float, str]:
    """The worst of `(ratio, text, where, alone)` parts, preferring a failure along one
    argument alone (it names the argument whose derivative is wrong)."""
    alone = [q[:3] for q in parts if q[3] and q[0] > 1]
    return _worst(alone or [q[:3] for q in parts])


def _fd_part(got, fd, noise, fd_rtol, where) -> tuple[float, str, str]:
    """Compare a derivative with its central difference: |got - fd| <= fd_rtol * scale +
    noise, where noise bounds the difference quotient's rounding error."""
    got, fd = np.asarray(got, np.float64), np.asarray(fd, np.float64)
    if not (np.all(np.isfinite(got)) and np.all(np.isfinite(fd))):
        return np.inf, "non-finite values (finite differences need a smooth neighbourhood)", where
    if got.size == 0:
        return 0.0, "empty", where
    err = np.abs(got - fd)
    scale = max(float(np.max(np.abs(fd))), float(np.max(np.abs(got))))
    bound = fd_rtol * scale + noise
    i = np.unravel_index(np.argmax(err), err.shape)
    e = float(err[i])
    if e <= bound:
        return e / bound if bound else 0.0, f"max |error| {e:.1e} <= {bound:.1e}", where
    index = tuple(int(k) for k in i)
    return (e / bound, f"at index {index}: got {got[i]!r}, finite differences {fd[i]!r}, "
            f"|error| {e:.3e} > bound {bound:.3e}; {int(np.sum(err > bound))} of {err.size} "
            f"elements out", where)


def _difference(at, p, v, eps):
    """Central difference of `at` (a function of the flat inputs returning a list of arrays)
    along v, and a bound on its rounding error per output leaf."""
    plus = at([np.asarray(a) + eps * b for a, b in zip(p, v, strict=True)])
    minus = at([np.asarray(a) - eps * b for a, b in zip(p, v, strict=True)])
    fd, noise = [], []
    for a, b in zip(plus, minus, strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        fd.append((a - b) / (2 * eps))
        size = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(b), initial=0.0))
        noise.append(8 * np.finfo(np.float64).eps * size / eps)
    return fd, noise


def _abs(arrays):
    return [np.abs(np.asarray(a, np.float64)) for a in arrays]


def _identity(a, b, rtol, what, extra=0.0) -> tuple[float, str]:
    """|a - b| against rtol * scale (+ extra) for two inner products `(value, scale)` meant
    equal."""
    (x, sx), (y, sy) = a, b
    err, bound = abs(x - y), rtol * max(sx, sy) + extra
    ratio = err / bound if bound else (0.0 if err == 0 else np.inf)
    if ratio <= 1:
        return ratio, f"|error| {err:.1e} <= {bound:.1e}"
    return ratio, f"{what[0]} = {x!r}, {what[1]} = {y!r}, |error| {err:.3e} > {bound:.3e}"


def _describe(leaves) -> str:
    """`argument 0 (`x`) float32[2, 5]`, ...; an argument of more than three arrays (a
    model's parameters) in one phrase: `argument 0 (`p`): 10 float32 arrays, 61,706 values`."""
    by_arg: dict = {}
    for label, a in leaves:
        by_arg.setdefault(label.split("[")[0], []).append((label, a))
    phrases = []
    for arg, group in by_arg.items():
        if len(group) > 3:
            dtypes = "/".join(sorted({str(a.dtype) for _, a in group}))
            size = sum(int(np.size(a)) for _, a in group)
            phrases.append(f"{arg}: {len(group)} {dtypes} arrays, {size:,} values")
        else:
            phrases += [f"{label} {a.dtype}{list(a.shape)}" for label, a in group]
    return ", ".join(phrases)


def _flip(a):
    return jnp.flip(a) if a.ndim else a


class _Checker:
    """The state of one `check_op` call: inputs, directions, the functions' rules, the rows."""

    def __init__(self, fn, args, reference, order, modes, jit, directions, eps, fd_rtol,
                 rtol, atol, seed):
        names = _names(fn, len(args))
        flat, treedef, diff, labels = _differentiated(args, names, "check_op")
        if not diff:
            raise TypeError("check_op: no floating-point array among the arguments: nothing "
                            "to differentiate")
        for j in diff:
            if jnp.issubdtype(flat[j].dtype, jnp.complexfloating):
                raise TypeError(f"check_op: {labels[j]} is complex ({flat[j].dtype}); "
                                "check_op handles real floating-point arrays")
        restrict = functools.partial(_restrict, flat, treedef, diff)
        self.f = restrict(fn)
        self.primals = [jnp.asarray(flat[j]) for j in diff]
        outs = jax.tree_util.tree_leaves(jax.eval_shape(self.f, *self.primals))
        for k, o in enumerate(outs):
            if not jnp.issubdtype(o.dtype, jnp.floating):
                raise TypeError(f"check_op: output {k} has dtype {o.dtype}; return only "
                                "floating-point arrays from the function under test")
        self.order, self.eps, self.fd_rtol, self.rtol, self.atol = order, eps, fd_rtol, rtol, atol
        self.fwd, self.rev, self.jit = "fwd" in modes, "rev" in modes, jit
        self.where_in = [labels[j] for j in diff]
        self.where_out = ["output" if len(outs) == 1 else f"output {k}" for k in range(len(outs))]
        self.groups: dict = {}  # argument -> the indices of its differentiated leaves
        for i, j in enumerate(diff):
            self.groups.setdefault(labels[j].split("[")[0], []).append(i)

        rng = np.random.default_rng(seed)
        scales = [max(1.0, float(np.sqrt(np.mean(np.square(np.asarray(p, np.float64))))))
                  if p.size else 1.0 for p in self.primals]
        self.V64 = [[rng.standard_normal(p.shape) * s
                     for p, s in zip(self.primals, scales, strict=True)]
                    for _ in range(directions)]
        self.U64 = [rng.standard_normal(o.shape) for o in outs]
        self.V = [[jnp.asarray(v, p.dtype) for v, p in zip(vs, self.primals, strict=True)]
                  for vs in self.V64]
        # First-order finite differences also run along each argument alone (when there are
        # several), so a failure names the argument whose derivative is wrong.
        self.fd_directions = [(f"direction {k}", vs, False) for k, vs in enumerate(self.V64)]
        if len(self.groups) > 1:
            self.fd_directions += [
                (f"direction {k} along {arg} alone",
                 [v if i in leaves else np.zeros_like(v) for i, v in enumerate(vs)], True)
                for k, vs in enumerate(self.V64) for arg, leaves in self.groups.items()]
        self.U = [jnp.asarray(u, o.dtype) for u, o in zip(self.U64, outs, strict=True)]
        self.rules = _Rules(self.f, jit)
        self.ref = _Rules(restrict(reference), jit) if reference is not None else None
        self.checks: list[Check] = []
        self.cache: dict = {}
        self.errors: dict = {}  # family -> (kind, the exception computing it raised)
        self.reported: set = set()
        inputs = _describe([(labels[j], flat[j]) for j in diff])
        ref_name = (f"; reference {getattr(reference, '__name__', type(reference).__name__)}"
                    if reference is not None else "")
        self.title = (f"check_op({getattr(fn, '__name__', type(fn).__name__)}) at {inputs}"
                      f"{ref_name}; order {order}, modes {'+'.join(modes)}")

    # -- bookkeeping -------------------------------------------------------------------------
    def get(self, kind, key, compute, keep=()):
        """`compute()` once per `key`. `kind` names the quantity ("the float64 JVP"); its
        family is the kind in any dtype ("the JVP"): once computing any quantity of a family
        raised, the first check needing it reports the error and later ones are skipped.
        `keep` (the inputs whose ids are in `key`) is stored with the result, so no id in a
        key is reused by another object while the cache lives."""
        family = kind.replace("float64 ", "")
        if family in self.errors:
            raise _Unavailable(family)
        if key not in self.cache:
            try:
                self.cache[key] = (keep, compute())
            except Exception as e:
                self.errors[family] = (kind, e)
                raise _Unavailable(family) from e
        return self.cache[key][1]

    def failed(self, family) -> bool:
        return family in self.errors

    def row(self, name, thunk):
        try:
            ratio, text = thunk()
        except _Unavailable as u:
            kind, e = self.errors[u.key]
            if u.key in self.reported:
                self.checks.append(Check(name, "skip", f"needs {kind}, which failed above"))
                return
            self.reported.add(u.key)
            first = (str(e).strip().splitlines() or [""])[0]
            self.checks.append(Check(name, "FAIL", f"{kind} raised {type(e).__name__}: {first}"))
            return
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            self.checks.append(Check(name, "FAIL", f"raised {type(e).__name__}: {first}"))
            return
        self.checks.append(Check(name, "FAIL" if ratio > 1 else "ok", text))

    def compare(self, got, want, where):
        return _worst([(*_discrepancy(g, w, self.rtol, self.atol), n)
                       for g, w, n in zip(got, want, where, strict=True)])

    # -- the quantities ----------------------------------------------------------------------
    def value(self, r, p, tag=""):
        return self.get(f"the {tag}value", (tag, "value", id(p)), lambda: r.value(p), (p,))

    def vjp(self, r, p, u, tag=""):
        return self.get(f"the {tag}VJP", (tag, "vjp", id(p), id(u)), lambda: r.vjp(p, u),
                        (p, u))

    def jvp(self, r, p, v, tag=""):
        return self.get(f"the {tag}JVP", (tag, "jvp", id(p), id(v)), lambda: r.jvp(p, v),
                        (p, v))

    def second(self, r, attr, p, u, v, tag=""):
        title = _SECOND[attr]
        args = (p, v) if attr == "fwd_fwd" else (p, u, v)
        return self.get(f"the {tag}{title} product", (tag, attr, id(p), id(u), id(v)),
                        lambda: getattr(r, attr)(*args), (p, u, v))

    def wanted_second(self):
        return [a for a, ok in (("rev_rev", self.rev), ("fwd_rev", self.fwd and self.rev),
                                ("fwd_fwd", self.fwd)) if ok and self.order == 2]

    # -- the checks --------------------------------------------------------------------------
    def against_reference(self):
        r, ref, p, U, V = self.rules, self.ref, self.primals, self.U, self.V
        self.row("value = reference", lambda: self.compare(
            self.value(r, p), self.value(ref, p, "reference's "), self.where_out))
        if self.rev:
            self.row("VJP = reference's", lambda: self.compare(
                self.vjp(r, p, U), self.vjp(ref, p, U, "reference's "), self.where_in))
        if self.fwd:
            self.row("JVP = reference's", lambda: _worst([
                self.compare(self.jvp(r, p, v), self.jvp(ref, p, v, "reference's "),
                             self.where_out) + (f"direction {k}",) for k, v in enumerate(V)]))
        # Second-order products are sums whose terms cancel: in float32 their rounding can
        # exceed a bound relative to the (small) result, so both sides run in float64.
        with _x64():
            p64 = [jnp.asarray(np.asarray(a, np.float64)) for a in p]
            U64, v64 = [jnp.asarray(u) for u in self.U64], [jnp.asarray(t) for t in self.V64[0]]
            for attr in self.wanted_second():
                where = self.where_out if attr == "fwd_fwd" else self.where_in
                self.row(f"{_SECOND[attr]} = reference's", functools.partial(
                    lambda attr, where: self.compare(
                        self.second(r, attr, p64, U64, v64, "float64 "),
                        self.second(ref, attr, p64, U64, v64, "reference's float64 "), where),
                    attr, where))

    def against_finite_differences(self):
        """In float64: JVP and VJP against central differences, the adjoint identity, and
        the second-order products against differences of the VJP or JVP."""
        r, eps, fd_rtol = self.rules, self.eps, self.fd_rtol
        with _x64():
            p = [jnp.asarray(np.asarray(a, np.float64)) for a in self.primals]
            U = [jnp.asarray(u) for u in self.U64]
            V = [[jnp.asarray(v) for v in vs] for vs in self.V64]

            def points(q):
                return [jnp.asarray(a) for a in q]

            def value64():
                def compute():
                    out = r.value(p)
                    for o in out:
                        if o.dtype != np.float64:
                            raise TypeError(f"the function returned {o.dtype} for float64 "
                                            "inputs; finite differences need float64 throughout")
                    return out

                return self.get("the float64 value", ("float64", "value"), compute)

            def fd(k):
                value64()
                return self.get("the float64 value", ("fd", k), lambda: _difference(
                    lambda q: r.value(points(q)), p, self.fd_directions[k][1], eps))

            def jvp_fd():
                parts = []
                for k, (where, v, alone) in enumerate(self.fd_directions):
                    d, noise = fd(k)
                    got = self.jvp(r, p, [jnp.asarray(t) for t in v], "float64 ")
                    parts += [_fd_part(g, f, n, fd_rtol, f"{where}, {w}") + (alone,)
                              for g, f, n, w in zip(got, d, noise, self.where_out, strict=True)]
                return _worst_localised(parts)

            def vjp_fd():
                g = self.vjp(r, p, U, "float64 ")
                parts = []
                for k, (where, v, alone) in enumerate(self.fd_directions):
                    d, noise = fd(k)
                    rounding = sum(float(np.sum(np.abs(u))) * n
                                   for u, n in zip(self.U64, noise, strict=True))
                    ratio, text = _identity(
                        (_np_inner(g, v), _np_inner(_abs(g), _abs(v))),
                        (_np_inner(self.U64, d), _np_inner(_abs(self.U64), _abs(d))),
                        fd_rtol, ("<VJP(u), v>", "<u, finite differences>"), rounding)
                    parts.append((ratio, text, where, alone))
                return _worst_localised(parts)

            def adjoint():
                g = self.vjp(r, p, U, "float64 ")
                parts = []
                for k, v in enumerate(V):
                    jv = self.jvp(r, p, v, "float64 ")
                    scale = (_np_inner(_abs(self.U64), _abs(jv))
                             + _np_inner(_abs(g), _abs(self.V64[k])))
                    ratio, text = _identity((_np_inner(self.U64, jv), scale),
                                            (_np_inner(g, self.V64[k]), scale), ADJOINT_RTOL,
                                            ("<u, J v>", "<J^T u, v>"))
                    parts.append((ratio, text, f"direction {k}"))
                return _worst(parts)

            def second_fd(attr):
                value64()
                parts = []
                for k, v in enumerate(V):
                    if attr == "fwd_fwd":
                        kind, where = "the float64 JVP", self.where_out
                        at = lambda q, v=v: r.jvp(points(q), v)  # noqa: E731
                    else:
                        kind, where = "the float64 VJP", self.where_in
                        at = lambda q: r.vjp(points(q), U)  # noqa: E731
                    d, noise = self.get(kind, (attr, "fd", k),
                                        lambda: _difference(at, p, self.V64[k], eps))
                    got = self.second(r, attr, p, U, v, "float64 ")
                    parts += [_fd_part(a, b, n, fd_rtol, f"direction {k}, {w}")
                              for a, b, n, w in zip(got, d, noise, where, strict=True)]
                return _worst(parts)

            if self.fwd:
                self.row("JVP = finite differences", jvp_fd)
            if self.rev:
                self.row("VJP = finite differences (projected on v)", vjp_fd)
            if self.fwd and self.rev:
                self.row("adjoint: <u, J v> = <J^T u, v>", adjoint)
            for attr in self.wanted_second():
                of = "JVP" if attr == "fwd_fwd" else "VJP"
                self.row(f"{_SECOND[attr]} = finite differences of the {of}",
                         functools.partial(second_fd, attr))

    def parts(self):
        """Which first-order quantities the transformation checks compare: those of the
        modes asked for that did not already fail (reported above)."""
        return [(part, wanted and not self.failed(f"the {part}"))
                for part, wanted in (("value", True), ("VJP", self.rev), ("JVP", self.fwd))]

    def compared(self, parts):
        """The worst of the transformation checks' parts; with none left to compare (each
        failed above), the check is skipped."""
        if not parts:
            raise _Unavailable(next(iter(self.errors)))
        return _worst(parts)

    def under_jit(self):
        eager = _Rules(self.f, compile=False)
        p, U, v = self.primals, self.U, self.V[0]
        parts = []
        for part, wanted in self.parts():
            if not wanted:
                continue
            if part == "value":
                got, want, where = self.value(self.rules, p), eager.value(p), self.where_out
            elif part == "VJP":
                got, want, where = self.vjp(self.rules, p, U), eager.vjp(p, U), self.where_in
            else:
                got, want, where = self.jvp(self.rules, p, v), eager.jvp(p, v), self.where_out
            parts.append(self.compare(got, want, where) + (f"{part} (jit vs eager)",))
        return self.compared(parts)

    def under_vmap(self, leaves):
        """vmap of the value, VJP and JVP over two items ([x, flip(x)] for the batched leaves;
        cotangents and tangents always batched) against one call per item."""
        r, p, U, v = self.rules, self.primals, self.U, self.V[0]
        second = [_flip(a) if i in leaves else a for i, a in enumerate(p)]
        U2, v2 = [_flip(u) for u in U], [_flip(t) for t in v]
        axes = [0 if i in leaves else None for i in range(len(p))]
        pb = [jnp.stack([a, b]) if i in leaves else a
              for i, (a, b) in enumerate(zip(p, second, strict=True))]
        Ub = [jnp.stack(ab) for ab in zip(U, U2, strict=True)]
        vb = [jnp.stack(ab) for ab in zip(v, v2, strict=True)]
        parts = []
        for part, wanted in self.parts():
            if not wanted:
                continue
            if part == "value":
                got = jax.jit(jax.vmap(r.raw["value"], in_axes=(axes,)))(pb)
                items, where = (self.value(r, p), r.value(second)), self.where_out
            elif part == "VJP":
                got = jax.jit(jax.vmap(r.raw["vjp"], in_axes=(axes, 0)))(pb, Ub)
                items, where = (self.vjp(r, p, U), r.vjp(second, U2)), self.where_in
            else:
                got = jax.jit(jax.vmap(r.raw["jvp"], in_axes=(axes, 0)))(pb, vb)
                items, where = (self.jvp(r, p, v), r.jvp(second, v2)), self.where_out
            for item, want in enumerate(items):
                parts.append(self.compare([g[item] for g in got], want, where)
                             + (f"{part}, item {item}",))
        return self.compared(parts)

    def run(self, vmap) -> Report:
        if self.ref is not None:
            self.against_reference()
        self.against_finite_differences()
        if self.jit:
            self.row("jit = eager", self.under_jit)
        if vmap:
            groups = [("all arguments", list(range(len(self.primals))))]
            if len(self.groups) > 1:
                groups += [(f"{arg} alone", leaves) for arg, leaves in self.groups.items()]
            for title, leaves in groups:
                self.row(f"vmap over {title} = one by one",
                         functools.partial(self.under_vmap, leaves))
        return Report(self.title, tuple(self.checks))


_SECOND = {"rev_rev": "reverse over reverse", "fwd_rev": "forward over reverse",
           "fwd_fwd": "forward over forward"}


def check_op(
    fn,
    *args,
    reference=None,
    order: int = 2,
    modes=("fwd", "rev"),
    jit: bool = True,
    vmap: bool = True,
    directions: int = 2,
    eps: float = FD_EPS,
    fd_rtol: float = FD_RTOL,
    rtol=None,
    atol=None,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> Report:
    """Check every derivative of `fn` at `args`, every way, and report it in one table.

    The checks (each a line of the report; `modes` and `order` choose which apply):
      - against `reference` (if given), with `check_vjp`'s tolerances: the value, the VJP and
        the JVP in the arguments' dtypes, and the second-order products (reverse over reverse,
        forward over reverse, forward over forward) in float64 (their terms cancel: float32
        rounding would swamp a bound relative to the result);
      - against central finite differences in float64 along `directions` random directions v
        (x64 is switched on for these; `fn` must compute in float64 for float64 inputs): the
        JVP, the VJP projected on each direction (<VJP(u), v> = <u, dF/dv>), and the
        second-order products against differences of the VJP (or JVP) along v;
      - the adjoint identity <u, J v> = <J^T u, v> between fn's own JVP and VJP in float64:
        a forward rule and a backward rule written apart must be each other's transposes;
      - under `jax.jit` against eager evaluation, and under `jax.vmap` against one call per
        item, over all arguments at once and over each argument alone (the others unbatched:
        per-example gradients, ensembles), for the value, VJP and JVP. The second item is
        each batched array flipped along every axis: the same values, so domain constraints
        (positivity, rows summing to 1) still hold.

    Directions are normal, scaled per array by max(1, its RMS); cotangents u are normal.
    Arguments follow `check_vjp`: floating-point arrays (also in pytrees) are differentiated,
    integer, boolean and key arrays and Python ints held fixed, a Python float refused.
    Finite differences are wrong across a kink (ReLU at 0, tied maxima): choose inputs away
    from them. A quantity that raises (e.g. the JVP of a `jax.custom_vjp` function) fails
    the first check that needs it and skips the others.

    Args:
      fn: the function under test: arrays (pytrees) in, floating-point arrays (a pytree) out.
      *args: its positional arguments.
      reference: an independent implementation (e.g. plain lax under JAX's autodiff).
      order: 1 or 2.
      modes: "fwd" and/or "rev": which derivatives fn has (a `jax.custom_vjp` function has
        only "rev").
      jit: compile (and compare with eager evaluation); False for functions that cannot be
        traced (with vmap=False).
      vmap: check batching.
      directions: how many random directions.
      eps: the finite-difference step (float64).
      fd_rtol: the finite differences' bound relative to the derivative's scale (plus the
        difference quotient's rounding error).
      rtol, atol: override the per-dtype `TOLERANCES` of the reference, jit and vmap checks.
      seed: seed of the directions and cotangents.
      raise_on_failure: raise AssertionError carrying the report when a check fails (pytest
        shows the table); False returns the report either way.

    Returns:
      The `Report`; `print(report)` shows the table.
    """
    if order not in (1, 2):
        raise ValueError(f"check_op: order must be 1 or 2, got {order!r}")
    modes = tuple(modes)
    if not modes or not set(modes) <= {"fwd", "rev"}:
        raise ValueError(f"check_op: modes must be a non-empty subset of ('fwd', 'rev'), "
                         f"got {modes!r}")
    if not isinstance(directions, int) or directions < 1:
        raise ValueError(f"check_op: directions must be a positive int, got {directions!r}")
    checker = _Checker(fn, args, reference, order, modes, jit, directions, eps, fd_rtol, rtol,
                       atol, seed)
    report = checker.run(vmap)
    if raise_on_failure and not report.passed:
        raise AssertionError("\n" + str(report))
    return report
