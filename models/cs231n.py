"""The pattern INPUT -> [[CONV -> RELU]*N -> POOL]*M -> [FC -> RELU]*K -> FC of the CS231n notes
(cs231n.github.io/convolutional-networks, "Layer Patterns")."""

from fcnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, serial


def cs231n_convnet(n: int = 2, m: int = 2, k: int = 1, channels=(32, 64), hidden: int = 256,
                   num_classes: int = 10):
    """For 32x32x3. Stage i (of m) has `channels[i]` filters (the last entry repeats), 3x3 pad 1
    convs keeping the size, and a 2x2 max pool halving it; then k hidden FC layers of `hidden`.
    The defaults are a small CIFAR-10 net: [conv3-32 x2, pool] [conv3-64 x2, pool] fc256 fc10."""
    for name, v in (("n", n), ("m", m), ("k", k)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"cs231n_convnet: `{name}` must be an int >= 0, got {v!r}.")
    layers = []
    for stage in range(m):
        width = channels[min(stage, len(channels) - 1)]
        for _ in range(n):
            layers += [Conv2D(width, 3, padding=1), ReLU()]
        layers.append(MaxPool2D(2))
    layers.append(Flatten())
    for _ in range(k):
        layers += [Dense(hidden), ReLU()]
    layers.append(Dense(num_classes))
    return serial(*layers)
