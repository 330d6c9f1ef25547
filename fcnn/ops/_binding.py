"""Which JAX mechanism carries fcnn's hand-written rules.

- "primitive" (the default): ops whose rules are JAX primitives (`convolution.primitives`) with
  hand-written JVP, transpose and batching rules, so forward mode (`jax.jvp`, `jacfwd`,
  `hessian`), reverse mode and `vmap` all run fcnn's rules.
- "custom_vjp": every op a `jax.custom_vjp` with a hand-written backward rule: reverse mode
  (`grad`, `grad(grad)`, `vmap(grad)`) only; forward mode is refused by JAX. The portable
  fallback, kept under the whole suite (`FCNN_BINDING=custom_vjp python -m pytest`).

The binding is read when an op is traced; changing it clears JAX's caches, so nothing traced
under the other one is reused. `FCNN_BINDING` in the environment sets the starting value.
The rules' maths (which map is whose transpose) and the algorithms that compute each map are the
same under both.
"""

from __future__ import annotations

import contextlib
import os
import warnings

BINDINGS = ("primitive", "custom_vjp")


def _check(name, where):
    if name not in BINDINGS:
        raise ValueError(f"{where}: the binding must be one of {', '.join(BINDINGS)}, got "
                         f"{name!r}.")
    return name


def bound(by_primitive, by_custom_vjp):
    """One op under both bindings: a function calling `by_primitive` (fcnn's primitives, or a
    custom_jvp with its JVP written out) under the primitive binding and `by_custom_vjp`
    otherwise, chosen each time it is traced. An op whose rules are primitives passes a
    function that imports its primitives module when called (the module registers the rules
    with JAX): the op's module is imported first, and no module imports every primitives
    module, so the import graph has no cycle through here (docs/design.md, "Where things
    are")."""

    def op(*args):
        return (by_primitive if _current == "primitive" else by_custom_vjp)(*args)

    return op


def linear_vjp_pair(compute, compute_t):
    """The custom_vjp binding of a map linear in its first argument and its transpose, both
    configured by a static second argument: each one's backward is the other, so the pair
    closes under every order of reverse mode. Returns the map's custom_vjp function."""
    from functools import partial

    import jax

    @partial(jax.custom_vjp, nondiff_argnums=(1,))
    def f(a, cfg):
        return compute(a, cfg)

    @partial(jax.custom_vjp, nondiff_argnums=(1,))
    def f_t(a, cfg):
        return compute_t(a, cfg)

    f.defvjp(lambda a, cfg: (f(a, cfg), None), lambda cfg, _, g: (f_t(g, cfg),))
    f_t.defvjp(lambda a, cfg: (f_t(a, cfg), None), lambda cfg, _, g: (f(g, cfg),))
    return f


def _probe_jax() -> str:
    """Why this JAX lacks the public extension API the primitives use ("" if it has it). Only
    JAX is probed here: an error in fcnn's own primitive modules is raised, never hidden."""
    try:
        import jax
        from jax.extend.core import Primitive  # noqa: F401
        from jax.interpreters import ad, batching, mlir

        for owner, name in ((jax.core, "ShapedArray"), (jax, "typeof"), (mlir, "lower_fun"),
                            (mlir, "register_lowering"), (ad, "primitive_jvps"),
                            (ad, "primitive_transposes"), (batching, "primitive_batchers")):
            getattr(owner, name)
    except (ImportError, AttributeError) as e:  # pragma: no cover - depends on the JAX release
        return f"{type(e).__name__}: {e}"
    return ""


_WHY = _probe_jax()
PRIMITIVES_AVAILABLE = not _WHY
_current = _check(os.environ.get("FCNN_BINDING", "primitive"), "FCNN_BINDING")
if _current == "primitive" and not PRIMITIVES_AVAILABLE:  # pragma: no cover
    warnings.warn(f"fcnn: this JAX lacks the primitive API fcnn's forward-mode rules use "
                  f"({_WHY}); using the custom_vjp binding (reverse mode only).", stacklevel=3)
    _current = "custom_vjp"


def binding() -> str:
    """The binding ops are traced with now: "primitive" or "custom_vjp"."""
    return _current


def set_binding(name: str) -> None:
    """Trace ops with `name`'s binding from now on ("primitive" or "custom_vjp").

    A change clears JAX's caches (`jax.clear_caches`): a function traced under the other
    binding (a jitted train step) is traced again, not served stale."""
    global _current
    _check(name, "set_binding")
    if name == "primitive" and not PRIMITIVES_AVAILABLE:
        raise ValueError(f"set_binding: the primitive binding is unavailable on this JAX "
                         f"({_WHY}).")
    if name != _current:
        import jax

        jax.clear_caches()
    _current = name


@contextlib.contextmanager
def using(name: str):
    """Trace ops with `name`'s binding inside the `with` block."""
    before = _current
    set_binding(name)
    try:
        yield
    finally:
        set_binding(before)
