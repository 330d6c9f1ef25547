"""fcnn's internal import graph: modules, import edges (at module level, and deferred: inside a
function, or a module named by string as "fcnn.ops.x:function" for `_binding.bound` to import
on first use), and its cycles (strongly connected groups of modules), counted with and without
the deferred edges. Run on any checkout: `python tools/import_graph.py [ROOT]`."""
import ast
import re
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
pkg = root / "fcnn"
mods = {}
for p in pkg.rglob("*.py"):
    name = ".".join(p.relative_to(root).with_suffix("").parts)
    if name.endswith(".__init__"):
        name = name[: -len(".__init__")]
    mods[name] = p


def resolve(node, current):
    out = []
    if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant)):
        out.append(node.args[0].value)  # importlib.import_module("fcnn.ops.pad")
    elif isinstance(node, ast.Import):
        for a in node.names:
            if a.name.startswith("fcnn"):
                out.append(a.name)
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = current.split(".")
            pkgparts = parts if mods[current].name == "__init__.py" else parts[:-1]
            base = ".".join(pkgparts[: len(pkgparts) - node.level + 1] + ([base] if base else []))
        if base.startswith("fcnn"):
            for a in node.names:
                cand = f"{base}.{a.name}"
                out.append(cand if cand in mods else base)
    return [m for m in out if m in mods]


edges, deferred = set(), set()
for name, p in mods.items():
    text = p.read_text()
    for m in re.findall(r'"(fcnn(?:\.\w+)+):\w+"', text):
        if m in mods and m != name:
            deferred.add((name, m))
    tree = ast.parse(text)
    in_function = set()  # imports inside a function run when it is called: deferred
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        for m in resolve(node, name):
            if m != name:
                (deferred if id(node) in in_function else edges).add((name, m))
all_edges = edges | deferred


def cycles_of(edge_set):
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]
    graph = {m: [b for a, b in edge_set if a == m] for m in mods}

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in mods:
        if v not in index:
            visit(v)
    return [sorted(c) for c in comps if len(c) > 1]


cycles = cycles_of(all_edges)
static_cycles = cycles_of(edges)
ops_mods = [m for m in mods if m.startswith("fcnn.ops")]
print(f"modules {len(mods)} (fcnn.ops: {len(ops_mods)}); import edges {len(all_edges)} "
      f"({len(edges)} at module level, {len(deferred)} deferred)")
print(f"cycles at module level: {len(static_cycles)}, "
      f"modules in them: {sum(len(c) for c in static_cycles)}")
print(f"cycles counting deferred imports too: {len(cycles)}")
for c in cycles:
    print(f"   {len(c)} modules: {', '.join(c)}")
outside = sorted({a for a, b in all_edges if a.startswith("fcnn.ops")
                  and not b.startswith("fcnn.ops") and b not in ("fcnn._args", "fcnn._files")})
print(f"fcnn.ops modules importing from outside fcnn.ops (but _args, _files): {outside}")
