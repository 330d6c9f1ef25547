"""Model init: the first call (what a script pays) and a second one, eager and under `vmap`.

Each measurement runs in a fresh Python process (a first call's cost is mostly XLA compiling,
and a process that has compiled once keeps its caches): the process imports fcnn and the
model, then times `model.init(key, shape)` until its arrays are ready, twice (first and second
call), or `jax.vmap(model.init)` over `--members` keys likewise. `--compiled off` sets
`fcnn.layers._base.COMPILED_INIT = False`: the init run op by op, as fcnn did before its init ran as
one compiled program (the A/B in docs/performance.md). Reported: the median over `--repeats`
processes of each call, in seconds.

    python benchmarks/init.py [--models lenet5,resnet20,resnet50,vgg16] [--members 4]
        [--repeats 3] [--compiled on,off] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._report import key, table  # noqa: E402

CHILD = r"""
import json, sys, time
import jax
import fcnn.layers._base
import models
name, members, compiled = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "on"
fcnn.layers._base.COMPILED_INIT = compiled
model, shape = getattr(models, name)(), models.INPUT_SHAPES[name]
if members:
    keys = jax.random.split(jax.random.key(0), members)
    call = lambda: jax.vmap(lambda k: model.init(k, shape)[0])(keys)
else:
    call = lambda: model.init(jax.random.key(0), shape)[0]
times = []
for _ in range(2):
    t = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def measure(name: str, members: int, compiled: str) -> list[float]:
    """`[first, second]` call seconds in one fresh process."""
    out = subprocess.run([sys.executable, "-c", CHILD, name, str(members), compiled],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,resnet50,vgg16")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compiled", default="on,off")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        for members in (0, args.members):
            for compiled in args.compiled.split(","):
                runs = [measure(name, members, compiled) for _ in range(args.repeats)]
                first = statistics.median(r[0] for r in runs)
                second = statistics.median(r[1] for r in runs)
                rows.append({"model": name, "call": f"vmap x{members}" if members else "eager",
                             "compiled": compiled, "first_s": round(first, 3),
                             "second_s": round(second, 4)})
                print(rows[-1], flush=True)
    print(f"\n{platform.processor() or platform.machine()}, python benchmarks/init.py "
          f"--repeats {args.repeats}\n")
    print(table(rows, [(c, key(c)) for c in ("model", "call", "compiled", "first_s",
                                              "second_s")]))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
