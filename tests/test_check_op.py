"""fcnn.testing.check_op: every check passes on fcnn's own rules, and each kind of wrong rule
(first order, second order only, a transpose disagreeing with its JVP, a batching rule, a
forward mode that does not exist) fails exactly the checks that can see it."""

from __future__ import annotations

import os
import pathlib
import re
import runpy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

from fcnn import ops
from fcnn import reference as R
from fcnn.testing import Report, check_op
from tests.strategies import normal

ROOT = pathlib.Path(__file__).resolve().parents[1]

# the thorough profile (HYPOTHESIS_PROFILE=thorough) runs what every run leaves out
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"


def _statuses(report: Report) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


def assert_fails_exactly(report: Report, failing: set[str]) -> None:
    """The report's failed checks are `failing`; all others passed (none skipped)."""
    statuses = _statuses(report)
    assert {n for n, s in statuses.items() if s == "FAIL"} == failing, str(report)
    assert {n for n, s in statuses.items() if s == "skip"} == set(), str(report)


def test_dense_with_a_params_pytree_passes_every_check_and_the_report_lists_them():
    params = {"w": normal(0, (4, 3), jnp.float32), "b": normal(1, (3,), jnp.float32)}
    x = normal(2, (5, 4), jnp.float32)
    with ops.using_binding("primitive"):  # forward mode (FCNN_BINDING may differ)
        report = check_op(lambda p, x: ops.dense(x, p["w"], p["b"]), params, x,
                          reference=lambda p, x: R.dense(x, p["w"], p["b"]))
    assert report.passed and not report.failures
    assert list(_statuses(report)) == [
        "value = reference", "VJP = reference's", "JVP = reference's",
        "reverse over reverse = reference's", "forward over reverse = reference's",
        "forward over forward = reference's",
        "JVP = finite differences", "VJP = finite differences (projected on v)",
        "adjoint: <u, J v> = <J^T u, v>",
        "reverse over reverse = finite differences of the VJP",
        "forward over reverse = finite differences of the VJP",
        "forward over forward = finite differences of the JVP",
        "jit = eager", "vmap over all arguments = one by one",
        "vmap over argument 0 (`p`) alone = one by one",
        "vmap over argument 1 (`x`) alone = one by one",
    ]
    text = str(report)
    assert text.splitlines()[0].startswith(
        "check_op(<lambda>) at argument 0 (`p`)['b'] float32[3], argument 0 (`p`)['w'] "
        "float32[4, 3], argument 1 (`x`) float32[5, 4]; reference <lambda>; order 2")
    assert text.splitlines()[-1] == "16 passed, 0 failed, 0 skipped of 16 checks"


def _swish_ref(x, beta):
    return x * jax.nn.sigmoid(beta * x)


def _swish(missing_x: bool = False, frozen: bool = False):
    """x * sigmoid(beta * x) with a hand-written JVP; `missing_x` drops a factor x from
    d/dbeta (first order wrong), `frozen` computes the derivative from stop_gradient(x)
    (first order right, second order wrong)."""

    @jax.custom_jvp
    def swish(x, beta):
        return _swish_ref(x, beta)

    @swish.defjvp
    def rule(primals, tangents):
        x, beta = primals
        dx, dbeta = tangents
        xd = jax.lax.stop_gradient(x) if frozen else x
        s = jax.nn.sigmoid(beta * xd)
        ds = s * (1 - s)
        dbeta_factor = xd * ds if missing_x else xd * xd * ds
        return swish(x, beta), (s + beta * xd * ds) * dx + dbeta_factor * dbeta

    return swish


_X = jnp.linspace(-2.0, 2.0, 7, dtype=jnp.float32)
_BETA = jnp.asarray(1.3, jnp.float32)
_FIRST_ORDER = {"VJP = reference's", "JVP = reference's", "JVP = finite differences",
                "VJP = finite differences (projected on v)"}
_SECOND_ORDER = {
    "reverse over reverse = reference's", "forward over reverse = reference's",
    "forward over forward = reference's",
    "reverse over reverse = finite differences of the VJP",
    "forward over reverse = finite differences of the VJP",
    "forward over forward = finite differences of the JVP"}


def test_a_correct_rule_passes():
    report = check_op(_swish(), _X, _BETA, reference=_swish_ref)
    assert_fails_exactly(report, set())


# The second-order checks against finite differences differentiate the first-order rule under
# test: forward over reverse and forward over forward agree with differences of a wrong VJP or
# JVP (they are its derivatives); reverse over reverse is the *transposed* derivative of the
# VJP, equal to the differences only when the VJP is a true gradient (a symmetric Hessian).
_SELF_CONSISTENT = {"forward over reverse = finite differences of the VJP",
                    "forward over forward = finite differences of the JVP"}


def test_a_wrong_first_derivative_fails_every_derivative_check_but_not_the_adjoint():
    """A custom_jvp's VJP is its JVP transposed by JAX, so the two agree with each other
    (adjoint identity passes) and disagree with the reference and finite differences."""
    report = check_op(_swish(missing_x=True), _X, _BETA, reference=_swish_ref,
                      raise_on_failure=False)
    assert_fails_exactly(report, (_FIRST_ORDER | _SECOND_ORDER) - _SELF_CONSISTENT)
    failed = {c.name: c.detail for c in report.failures}
    assert failed["VJP = reference's"].startswith("argument 1 (`beta`): worst element")


def test_without_a_reference_finite_differences_still_catch_it():
    report = check_op(_swish(missing_x=True), _X, _BETA, raise_on_failure=False)
    assert_fails_exactly(report, {n for n in (_FIRST_ORDER | _SECOND_ORDER) - _SELF_CONSISTENT
                                  if "reference" not in n})


def test_a_rule_wrong_only_at_second_order_fails_only_the_second_order_checks():
    """stop_gradient in the derivative: every first-order check passes (check_vjp would too)."""
    report = check_op(_swish(frozen=True), _X, _BETA, reference=_swish_ref,
                      raise_on_failure=False)
    assert_fails_exactly(report, _SECOND_ORDER)


def _doubling(name: str, transpose_factor: float = 2.0, batch_reversed: bool = False):
    """y = 2x as a primitive with a JVP (2 dx), a transpose (written apart: transpose_factor
    * ct) and a batching rule (wrong if batch_reversed: the items come back reversed)."""
    p = Primitive(name)
    p.def_impl(lambda x: 2.0 * x)
    p.def_abstract_eval(lambda x: x)
    mlir.register_lowering(p, mlir.lower_fun(lambda x: 2.0 * x, multiple_results=False))
    # the tangent goes through the primitive itself, so JAX transposes it with our rule
    ad.primitive_jvps[p] = lambda primals, tangents: (
        p.bind(primals[0]), p.bind(ad.instantiate_zeros(tangents[0])))
    ad.primitive_transposes[p] = lambda ct, x: [transpose_factor * ct]

    def batch(args, dims):
        out = p.bind(args[0])
        return (jnp.flip(out, dims[0]) if batch_reversed else out), dims[0]

    batching.primitive_batchers[p] = batch
    return lambda x: p.bind(x)


def test_a_transpose_that_disagrees_with_its_jvp_fails_the_adjoint_identity():
    report = check_op(_doubling("test_bad_transpose", transpose_factor=3.0),
                      normal(0, (3, 4)), raise_on_failure=False)
    assert_fails_exactly(report, {"adjoint: <u, J v> = <J^T u, v>",
                                  "VJP = finite differences (projected on v)"})


def test_a_wrong_batching_rule_fails_only_vmap():
    report = check_op(_doubling("test_bad_batching", batch_reversed=True), normal(0, (3, 4)),
                      raise_on_failure=False)
    assert_fails_exactly(report, {"vmap over all arguments = one by one"})
    assert "item 0" in report.failures[0].detail


def test_forward_mode_of_a_custom_vjp_fails_once_and_skips_what_needs_it():
    f = jax.custom_vjp(lambda x: jnp.sin(x))
    f.defvjp(lambda x: (jnp.sin(x), x), lambda x, g: (jnp.cos(x) * g,))
    x = normal(0, (5,))
    report = check_op(f, x, raise_on_failure=False)
    statuses = _statuses(report)
    first = next(c for c in report.checks if c.status == "FAIL")
    assert first.name == "JVP = finite differences"
    assert "can't apply forward-mode autodiff (jvp) to a custom_vjp function" in first.detail
    assert [c.status for c in report.failures] == ["FAIL"], str(report)
    assert statuses["VJP = finite differences (projected on v)"] == "ok"
    assert statuses["reverse over reverse = finite differences of the VJP"] == "ok"
    assert statuses["adjoint: <u, J v> = <J^T u, v>"] == "skip"
    # declared reverse-only, it passes
    assert check_op(f, x, modes=("rev",)).passed


def test_raises_with_the_report_for_pytest():
    with pytest.raises(AssertionError) as raised:
        check_op(_swish(missing_x=True), _X, _BETA, order=1, vmap=False)
    text = str(raised.value)
    assert "FAIL  JVP = finite differences" in text
    assert text.rstrip().endswith("2 passed, 2 failed, 0 skipped of 4 checks")


def test_a_function_that_is_not_float64_throughout_is_reported():
    report = check_op(lambda x: (x * 2).astype(jnp.float32), normal(0, (3,)), order=1,
                      raise_on_failure=False)
    detail = report.failures[0].detail
    assert "returned float32 for float64 inputs" in detail, str(report)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"order": 3}, "check_op: order must be 1 or 2, got 3"),
    ({"modes": ("fwd", "bwd")}, r"check_op: modes must be a non-empty subset of \('fwd', "
                                r"'rev'\), got \('fwd', 'bwd'\)"),
    ({"directions": 0}, "check_op: directions must be a positive int, got 0"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        check_op(jnp.sin, normal(0, (3,)), **kwargs)


def test_bad_arguments_and_outputs_are_refused():
    with pytest.raises(TypeError, match=r"check_op: argument 1 \(`s`\) is a Python float"):
        check_op(lambda x, s: x * s, normal(0, (3,)), 2.0)
    with pytest.raises(TypeError, match="check_op: no floating-point array"):
        check_op(lambda n: jnp.ones(3) * n, np.arange(3))
    with pytest.raises(TypeError, match="check_op: output 1 has dtype int"):
        check_op(lambda x: (x, jnp.argmax(x)), normal(0, (3,)))


def test_the_docs_example_fails_exactly_as_documented():
    """docs/correctness.md's swish block: the derivative in beta is named; adjoint, forward
    over reverse/forward, jit and vmap pass."""
    text = (ROOT / "docs" / "correctness.md").read_text()
    block = re.search(r"## Checking your own rules.*?```python\n(.*?)```", text, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "docs/correctness.md", "exec"), namespace)
    report = namespace["report"]
    assert [c.name for c in report.failures] == [
        "JVP = finite differences", "VJP = finite differences (projected on v)",
        "reverse over reverse = finite differences of the VJP"], str(report)
    assert "along argument 1 (`beta`) alone" in report.failures[0].detail
    assert "along argument 1 (`beta`) alone" in report.failures[1].detail
    shown = re.search(r"prints \(the last digits differ between CPUs\):\n\n```\n(.*?)```", text,
                      re.S).group(1).splitlines()
    assert [line.split()[:3] for line in shown] == [
        line.split()[:3] for line in str(report).splitlines()]


@pytest.mark.skipif(not THOROUGH, reason="the comparison script (14 s): the thorough profile")
def test_the_checker_comparison_tool_runs():
    """tools/gradient_checkers.py (docs/correctness.md's comparison): check_op fails a rule
    wrong by a relative 1e-5 in both dtypes (correct rules pass: the tests above)."""
    tool = runpy.run_path(str(ROOT / "tools" / "gradient_checkers.py"))
    rows = tool["rows"]([1e-5])
    assert [r[4:] for r in rows] == [("fails", "fails")], rows
