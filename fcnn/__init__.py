"""fcnn: a functional convolutional-network library on JAX with hand-written backward rules."""

from fcnn import memory

memory._from_environment()  # before XLA allocates: see fcnn.memory

from fcnn import init, layers, ops, reference, shapes, testing, tuning  # noqa: E402
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
