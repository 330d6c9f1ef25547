"""fcnn: a functional convolutional-network library on JAX with hand-written backward rules."""

from fcnn import memory

memory._from_environment()  # before XLA allocates: see fcnn.memory

import sys  # noqa: E402

from fcnn import init, layers, ops, reference, shapes, testing  # noqa: E402
from fcnn.ops import tuning  # noqa: E402

# `fcnn.tuning` is the convolution algorithms' tuning, which lives with the ops
# (fcnn/ops/tuning.py); the name stays, as the same module, for `import fcnn.tuning`
sys.modules.setdefault("fcnn.tuning", tuning)
from fcnn._info import Info, info  # noqa: E402
from fcnn.summary import Summary, summary  # noqa: E402

__all__ = [
    "Info",
    "Summary",
    "info",
    "init",
    "layers",
    "memory",
    "ops",
    "reference",
    "shapes",
    "summary",
    "testing",
    "tuning",
]
