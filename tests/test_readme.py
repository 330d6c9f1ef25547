"""The front door: README Quickstart, CI and the demo script stay in step and work; the README
and docs/ stay short, cite only what a reader can open, and name files that exist."""

from __future__ import annotations

import builtins
import pathlib
import re
import runpy

import jax
import pytest

from fcnn import ops

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]
# The README is the front door; details live in docs/ (each figure once, with its command).
README_MAX_LINES = 250


def _quickstart():
    text = README.read_text()
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


# A block that ends by showing an error, `# AssertionError: message` with the message's wrapped
# lines continued by `#   `, must raise exactly that error with exactly that message.
_SHOWN_ERROR = re.compile(r"^# (\w+Error): (.*(?:\n#   .*)*)\n\Z", re.M)


def test_readme_python_examples_run():
    """Every ```python block of the README, executed in order in one namespace, under the
    default binding the README describes; blocks that show an error raise it, word for word."""
    from fcnn import ops

    with ops.using_binding("primitive"):  # forward mode is shown (FCNN_BINDING may differ)
        namespace, raising = _run_readme_blocks()
    # "Checking your own ops": check_vjp catches a deliberately wrong rule
    assert any("check_vjp" in block and "custom_vjp" in block for block in raising), raising
    assert [c.name for c in namespace["report"].failures] == [  # check_op finds it alone
        "VJP = finite differences (projected on v)"], str(namespace["report"])
    assert namespace["out_shape"] == (10,)
    assert namespace["per_example"][0]["w"].shape == (8, 5, 5, 1, 6)
    assert namespace["ensemble"][0]["w"].shape == (4, 5, 5, 1, 6)
    assert jax.tree_util.tree_structure(namespace["hvp"]) == \
        jax.tree_util.tree_structure(namespace["params"])
    # the state example: x is zeros, so the batch has mean 0 and variance 0 per channel, and
    # one step takes the running variance from 1 to 0.9 * 1 + 0.1 * 0
    state = namespace["state"]
    assert namespace["bn"].stateful and namespace["logits"].shape == (8, 10)
    assert state[0] == () and float(jax.numpy.max(jax.numpy.abs(state[1]["var"] - 0.9))) < 1e-7


def _run_readme_blocks():
    """Execute the blocks; return the namespace and the blocks that raised as shown."""
    text = README.read_text()
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
    return namespace, raising


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail to docs/")


def test_readme_ops_table_lists_every_public_op():
    table = re.search(r"## The ops.*?(\| op \|.*?)\n\n", README.read_text(), re.S)
    assert table, "README has no ops table"
    missing = [name for name in ops.__all__ if not re.search(rf"`{name}\b", table.group(1))]
    assert not missing, f"fcnn.ops names missing from the README's ops table: {missing}"


# Documents a reader of this repository cannot open: notes kept outside it, and its own
# discussion threads. Cite papers, public course notes, or a document in the repository.
_OUTSIDE = re.compile(  # upper case names the outside notes; docs/design.md is ours
    r"DESIGN\.md|PERF-LEADS|STYLE\.md|"
    r"(?i:\bseed 00\d|\bthe seeds\b|\bissue #?\d+|datasets/README|(?:\.\./|/work/)shared\b)")
# Everything a user reads: the README, docs/, and every module, model, script, benchmark and tool.
_CITING = [README, *DOCS, *(path for folder in ("fcnn", "models", "scripts", "benchmarks", "tools")
                            for path in sorted((ROOT / folder).rglob("*.py")))]


def test_cites_only_what_a_reader_can_open():
    hits = [f"{path.relative_to(ROOT)}:{i}: {m.group(0)!r}" for path in _CITING
            for i, line in enumerate(path.read_text().splitlines(), 1)
            for m in _OUTSIDE.finditer(line)]
    assert len(_CITING) > 50 and not hits, f"citations of documents outside the repository: {hits}"


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_links_and_named_files_exist(path):
    """Every relative link (and its #anchor) resolves, and every repository file the page
    names (`scripts/train.py`, `benchmarks/ops.py`, ...) exists."""
    text = path.read_text()
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        resolved = (path.parent / file).resolve() if file else path
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    named = re.findall(r"(?<![\w/.])((?:fcnn|models|scripts|benchmarks|tools|tests)/[\w/]+\.\w+)",
                       text)
    broken += [name for name in named if not (ROOT / name).exists()]
    assert not broken, f"{path.relative_to(ROOT)} points to what is not there: {broken}"
