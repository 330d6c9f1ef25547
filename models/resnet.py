"""A small residual network (ResNet-20 style, no batch norm) for 32x32x3, built with `residual`
(the skip connection out = F(x) + x of He et al. 2015, "Deep Residual Learning for Image
Recognition")."""

from fcnn.layers import AvgPool2D, Conv2D, Dense, Flatten, ReLU, residual, serial


def _block(width, stride):
    body = serial(Conv2D(width, 3, stride=stride, padding=1), ReLU(),
                  Conv2D(width, 3, padding=1))
    # identity skip when shapes agree, a strided 1x1 projection when the block downsamples
    shortcut = None if stride == 1 else Conv2D(width, 1, stride=stride, use_bias=False)
    return serial(residual(body, shortcut), ReLU())


def resnet(blocks_per_stage: int = 3, widths=(16, 32, 64), num_classes: int = 10):
    """conv 3x3 -> [residual blocks] x stages (the first block of each later stage halves the
    size) -> global average pool -> dense. `blocks_per_stage=3` is ResNet-20's depth."""
    layers = [Conv2D(widths[0], 3, padding=1), ReLU()]
    for stage, width in enumerate(widths):
        for b in range(blocks_per_stage):
            layers.append(_block(width, 2 if stage > 0 and b == 0 else 1))
    size = 32 // 2 ** (len(widths) - 1)
    layers += [AvgPool2D(size), Flatten(), Dense(num_classes)]
    return serial(*layers)
