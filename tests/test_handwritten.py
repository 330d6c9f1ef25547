"""The hand-written rule is what runs, and no rule differentiates a reference to get there."""

from __future__ import annotations

import ast
import importlib
import pathlib

import jax
import jax.numpy as jnp
import pytest

import fcnn
from fcnn import ops
from fcnn.testing import rule_bindings

ROOT = pathlib.Path(fcnn.__file__).parent.parent
# Rules live in fcnn/ops; the layers only compose ops, and must not differentiate anything either.
SCANNED = sorted(p for d in ("ops", "layers") for p in (ROOT / "fcnn" / d).rglob("*.py"))
# JAX's ways to derive a derivative (or a transpose) for you; a rule that used one would be
# JAX's rule, not a hand-written one.
AUTODIFF = {
    "vjp", "grad", "jvp", "linearize", "linear_transpose", "closure_convert", "value_and_grad",
    "jacrev", "jacfwd", "jacobian", "hessian", "jet", "custom_linear_solve", "custom_root",
}
# JAX's internals (autodiff under other names) and the oracle the rules are checked against.
FORBIDDEN_MODULES = ("jax._src", "fcnn.reference")
FORBIDDEN_ATTRS = AUTODIFF | {"_src", "reference"}

x = jnp.ones((2, 6, 6, 2))
w = jnp.ones((3, 3, 2, 4))
z = jnp.ones((4, 5))
y = jnp.zeros(4, jnp.int32)
# conv2d and dense without a bias: with one, the bias's own rule would show a custom_vjp_call
# even if the conv or matmul had none.
CALLS = {
    "conv2d": lambda: ops.conv2d(x, w),
    "conv2d_grad_input": lambda: ops.conv2d_grad_input(jnp.ones((2, 4, 4, 4)), w, x.shape),
    "conv2d_grad_kernel": lambda: ops.conv2d_grad_kernel(x, jnp.ones((2, 4, 4, 4)), w.shape),
    "conv1d": lambda: ops.conv1d(x[:, 0], w[0]),
    "conv1d_grad_input": lambda: ops.conv1d_grad_input(jnp.ones((2, 4, 4)), w[0], x[:, 0].shape),
    "conv1d_grad_kernel": lambda: ops.conv1d_grad_kernel(x[:, 0], jnp.ones((2, 4, 4)), w[0].shape),
    "conv3d": lambda: ops.conv3d(x[:, None], w[None]),
    "conv3d_grad_input": lambda: ops.conv3d_grad_input(jnp.ones((2, 1, 4, 4, 4)), w[None],
                                                       x[:, None].shape),
    "conv3d_grad_kernel": lambda: ops.conv3d_grad_kernel(x[:, None], jnp.ones((2, 1, 4, 4, 4)),
                                                         w[None].shape),
    "conv_transpose1d": lambda: ops.conv_transpose1d(x[:, 0], w[0].transpose(0, 2, 1), stride=2),
    "conv_transpose2d": lambda: ops.conv_transpose2d(x, w.transpose(0, 1, 3, 2), stride=2),
    "conv_transpose3d": lambda: ops.conv_transpose3d(x[:, None], w[None].transpose(0, 1, 2, 4, 3)),
    "max_pool2d": lambda: ops.max_pool2d(x, 2),
    "avg_pool2d": lambda: ops.avg_pool2d(x, 2),
    "max_pool1d": lambda: ops.max_pool1d(x[:, 0], 2),
    "avg_pool1d": lambda: ops.avg_pool1d(x[:, 0], 2),
    "max_pool3d": lambda: ops.max_pool3d(x[:, None], (1, 2, 2)),
    "avg_pool3d": lambda: ops.avg_pool3d(x[:, None], (1, 2, 2)),
    "pad": lambda: ops.pad(x, 1, "reflect"),
    "adaptive_avg_pool": lambda: ops.adaptive_avg_pool(x, (4, 3)),
    "upsample": lambda: ops.upsample(x, 2, method="linear"),
    "pixel_shuffle": lambda: ops.pixel_shuffle(jnp.ones((2, 3, 3, 8)), 2),
    "pixel_unshuffle": lambda: ops.pixel_unshuffle(x, 2),
    "dense": lambda: ops.dense(z, jnp.ones((5, 3))),
    "dropout": lambda: ops.dropout(jax.random.key(0), x, 0.5),
    "relu": lambda: ops.relu(x),
    "leaky_relu": lambda: ops.leaky_relu(x),
    "elu": lambda: ops.elu(x),
    "sigmoid": lambda: ops.sigmoid(x),
    "tanh": lambda: ops.tanh(x),
    "softmax_cross_entropy": lambda: ops.softmax_cross_entropy(z, y),
    "mse": lambda: ops.mse(z, z),
    "hinge": lambda: ops.hinge(z, y),
    "local_response_norm": lambda: ops.local_response_norm(x),
    "batch_norm": lambda: ops.batch_norm(x, jnp.ones(2), jnp.zeros(2)),
    "batch_norm_inference": lambda: ops.batch_norm_inference(x, *[jnp.ones(2)] * 4),
    "group_norm": lambda: ops.group_norm(x, jnp.ones(2), jnp.zeros(2), 2),
}
WITH_BIAS = {"dense": lambda: ops.dense(z, jnp.ones((5, 3)), jnp.ones(3))}
# conv2d with a bias or an activation is one op with its own rules (fcnn.ops.convolution.fused)
FUSED = {
    "bias": lambda: ops.conv2d(x, w, jnp.ones(4)),
    "relu": lambda: ops.conv2d(x, w, activation="relu"),
    "bias+relu": lambda: ops.conv2d(x, w, jnp.ones(4), activation="relu"),
}


def _rules(call):
    """How many hand-written rule bindings the primal jaxpr of `call` shows."""
    return rule_bindings(call)


def test_every_public_op_is_covered():
    assert set(CALLS) == set(ops.__all__)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_primal_jaxpr_shows_a_rule_binding(name):
    assert _rules(CALLS[name]) >= 1, jax.make_jaxpr(CALLS[name])()


@pytest.mark.parametrize("name", sorted(WITH_BIAS))
def test_with_a_bias_the_op_rule_and_the_bias_rule_both_run(name):
    assert _rules(WITH_BIAS[name]) >= 2, jax.make_jaxpr(WITH_BIAS[name])()


@pytest.mark.parametrize("name", sorted(FUSED))
def test_a_conv_with_a_bias_or_an_activation_binds_the_fused_op(name):
    assert _rules(FUSED[name]) == 1, jax.make_jaxpr(FUSED[name])()
    if ops.binding() == "primitive":
        names = [e.primitive.name for e in jax.make_jaxpr(FUSED[name])().eqns]
        assert "fcnn_conv_act" in names and "fcnn_conv" not in names, names


def test_the_jaxpr_check_sees_a_conv_or_matmul_without_its_rule(monkeypatch):
    """With conv's, the fused conv's and the matmul's rules replaced by their plain forwards,
    the calls bind no rule (the checks above fail), while the biased dense still shows the
    bias's: a check on the biased calls alone could not tell."""
    conv = importlib.import_module("fcnn.ops.conv")
    dense = importlib.import_module("fcnn.ops.dense")
    monkeypatch.setattr(conv, "_conv", lambda x, w, cfg: conv.algo.forward(x, w, cfg))
    monkeypatch.setattr(conv, "_conv_act", lambda x, w, b, cfg, relu: conv.algo.forward(x, w, cfg))
    monkeypatch.setattr(dense, "_matmul", lambda x, w, precision: jnp.matmul(x, w))
    assert _rules(CALLS["conv2d"]) == 0
    assert all(_rules(f) == 0 for f in FUSED.values())
    for name in WITH_BIAS:
        assert _rules(CALLS[name]) == 0, name
        assert _rules(WITH_BIAS[name]) == 1, name


# ----------------------------------------------------------------------------- the source scan


def _dotted(node):
    """`a.b.c` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _forbidden_module(name):
    return any(name == m or name.startswith(m + ".") for m in FORBIDDEN_MODULES)


def _offence(node, package):
    """Why `node` (in a module of `package`) reaches autodiff or the oracle, or None."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if _forbidden_module(alias.name) or AUTODIFF & set(alias.name.split(".")):
                return f"import {alias.name}"
    elif isinstance(node, ast.ImportFrom):
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        module = ".".join([*base, *([node.module] if node.module else [])])
        for alias in node.names:
            if (alias.name == "*" or alias.name in AUTODIFF or _forbidden_module(module)
                    or _forbidden_module(f"{module}.{alias.name}")):
                return f"from {module} import {alias.name}"
    elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
        return f"attribute {_dotted(node) or node.attr}"
    elif isinstance(node, ast.Call):
        callee = _dotted(node.func) or ""
        if callee.split(".")[-1] in ("__import__", "import_module"):
            return f"dynamic import {callee}(...)"
        if (callee == "getattr" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in FORBIDDEN_ATTRS):
            return f"getattr(..., {node.args[1].value!r})"
    return None


def autodiff_uses(source, package):
    """`line: why` for every place in `source` (a module of `package`, e.g. "fcnn.ops") that
    imports or uses JAX's autodiff, JAX's internals or fcnn.reference."""
    return [
        f"{node.lineno}: {why}"
        for node in ast.walk(ast.parse(source))
        if (why := _offence(node, package))
    ]


def test_the_scan_covers_ops_and_layers():
    names = {p.relative_to(ROOT).as_posix() for p in SCANNED}
    assert {"fcnn/ops/conv.py", "fcnn/ops/pool.py", "fcnn/ops/convolution/algorithms.py",
            "fcnn/layers/core.py"} <= names


@pytest.mark.parametrize("path", SCANNED, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_rule_calls_autodiff(path):
    """No `jax.vjp`, `jax.grad`, `jax.linear_transpose`, ..., no `jax._src` and no
    `fcnn.reference` anywhere in fcnn/ops or fcnn/layers: each derivative is written out."""
    package = ".".join(path.relative_to(ROOT).parent.parts)
    offenders = autodiff_uses(path.read_text(), package)
    assert not offenders, f"{path.relative_to(ROOT)} reaches autodiff: {offenders}"


@pytest.mark.parametrize("source", [
    "jax.grad(f)(x)",
    "jax.vjp(f, x)",
    "jax.jvp(f, (x,), (t,))",
    "jax.linearize(f, x)",
    "jax.linear_transpose(f, x)",
    "jax.closure_convert(f, x)",
    "jax.value_and_grad(f)",
    "jax.jacrev(f)",
    "jax.jacfwd(f)",
    "jax.hessian(f)",
    "lax.custom_linear_solve(mv, b, solve)",
    "import jax as j\nj.linear_transpose(f, x)",
    "from jax import grad",
    "from jax import linear_transpose",
    "from jax import closure_convert as convert",
    "from jax.experimental.jet import jet",
    "import jax.experimental.jet",
    "from jax._src import ad_util",
    "from jax._src.interpreters.ad import backward_pass",
    "import jax._src.interpreters.ad",
    "import jax._src.interpreters.ad as ad",
    "from jax import _src",
    "import jax\njax._src.ad_util.zeros_like_aval(a)",
    "from fcnn.reference import conv2d",
    "from fcnn import reference",
    "from fcnn import reference as R",
    "import fcnn.reference",
    "import fcnn.reference as R",
    "import fcnn\nfcnn.reference.conv2d(x, w)",
    "from ..reference import conv2d",
    "from .. import reference",
    "from jax import *",
    "getattr(jax, 'vjp')(f, x)",
    "importlib.import_module('fcnn.reference')",
    "__import__('jax._src.ad_util')",
])
def test_the_scan_catches_every_forbidden_form(source):
    assert autodiff_uses(source, "fcnn.ops"), source


def test_the_scan_passes_what_rules_use():
    clean = (
        "import jax\nimport jax.numpy as jnp\nimport numpy as np\nfrom jax import lax\n"
        "from functools import partial\nfrom fcnn import _args\nfrom fcnn.ops import _taps\n"
        "from . import _checks\nfrom .._args import as_pair\n"
        "@partial(jax.custom_vjp, nondiff_argnums=(1,))\ndef f(x, cfg):\n"
        "    return lax.max(x, jnp.zeros((), x.dtype))\n"
        "f.defvjp(fwd, bwd)\nkeys = jax.random.split(key)\ny = getattr(ops, name)(x)\n"
    )
    assert autodiff_uses(clean, "fcnn.ops") == []
    assert autodiff_uses("from .. import reference", "fcnn.ops") == [
        "1: from fcnn import reference"]
