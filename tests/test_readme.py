"""The front door: README Quickstart, CI and the demo script stay in step and work."""

from __future__ import annotations

import builtins
import pathlib
import re
import runpy

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _quickstart():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S)
    assert block, "README has no Quickstart bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_two_commands_and_ci_runs_the_second_verbatim():
    commands = _quickstart()
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, f"{commands[1]!r} is not a line of .ci/run"
    assert "pytest" in commands[1] and "scripts/train.py" in commands[0]


def test_demo_runs_and_reports_agreement(capsys):
    runpy.run_path(str(ROOT / "scripts" / "demo.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "all hand-written gradients match jax.grad" in out
    assert out.count("max |fcnn - jax.grad|") == 6


def test_bench_ops_writes_its_table(tmp_path):
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_ops.py"))
    out = tmp_path / "bench.json"
    rows = bench["main"](["--repeats", "2", "--only", "dense", "--json", str(out)])
    assert {r["mode"] for r in rows} == {"fwd", "fwd+bwd"}
    assert all(r["fcnn_ms"] > 0 and r["autodiff_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert out.read_text().count('"ratio"') == len(rows)


# A block that ends by showing an error, `# AssertionError: message` with the message's wrapped
# lines continued by `#   `, must raise exactly that error with exactly that message.
_SHOWN_ERROR = re.compile(r"^# (\w+Error): (.*(?:\n#   .*)*)\n\Z", re.M)


def test_readme_python_examples_run():
    """Every ```python block of the README, executed in order in one namespace; blocks that
    show an error raise it, word for word."""
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    raising = []
    for block in blocks:
        code = compile(block, "README.md", "exec")
        shown = _SHOWN_ERROR.search(block)
        if shown is None:
            exec(code, namespace)
            continue
        with pytest.raises(getattr(builtins, shown.group(1))) as raised:
            exec(code, namespace)
        assert str(raised.value) == shown.group(2).replace("\n#   ", " ")
        raising.append(block)
    # "Checking your own ops": check_vjp catches a deliberately wrong rule
    assert any("check_vjp" in block and "custom_vjp" in block for block in raising), raising
    assert namespace["out_shape"] == (10,)
    assert namespace["per_example"][0]["w"].shape == (8, 5, 5, 1, 6)
    assert namespace["ensemble"][0]["w"].shape == (4, 5, 5, 1, 6)
