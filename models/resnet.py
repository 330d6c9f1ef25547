"""Residual networks (He et al. 2015, "Deep Residual Learning for Image Recognition"), built with
`residual` (the skip connection out = F(x) + x) and, as their authors built them, batch norm after
every convolution ("right after each convolution and before activation", §3.4).

- `resnet20/32/44/56/110(num_classes=10)`: the CIFAR-10 networks of §4.2 on 32x32x3 (any
  size: the global average pool takes whatever map is left; 28x28 MNIST digits give 7x7). A 3x3
  conv of 16, three stages of n basic blocks on 32x32, 16x16 and 8x8 maps with 16, 32 and 64
  filters (6n + 2 layers), global average pool, a fully connected layer. **Option A**
  shortcuts: identity; where a stage begins, subsampling by 2 (a 1x1 window of stride 2) and
  zero channels appended (`PadChannels`), so no shortcut has parameters:
  269,722 / 464,154 / 658,586 / 853,018 / 1,727,962 parameters (the paper's 0.27M / 0.46M /
  0.66M / 0.85M / 1.7M).
- `resnet50/101/152(num_classes=1000, stride_in_3x3=True)`: the same stem and stages of
  bottleneck blocks (1x1, 3x3, 1x1 with 4x the width out; 3-4-6-3, 3-4-23-3, 3-8-36-3), option B
  projections: 25,557,032 / 44,549,160 / 60,192,808 parameters, torchvision's "v1.5" (the
  stride of a stage's first block in its 3x3 convolution; `stride_in_3x3=False` puts it in the
  first 1x1, as the paper's Figure 5 and Table 1's 3.8/7.6/11.3 G multiply-adds count).
- `resnet18/34(num_classes=1000)`: the ImageNet networks of Table 1 on 224x224x3: a 7x7/2 conv
  of 64 (padding 3: 112x112), a 3x3/2 max pool (padding 1: 56x56), four stages of basic blocks
  (64, 128, 256, 512 filters; 2-2-2-2 or 3-4-6-3 blocks; 3x3 convs padded 1), global average
  pool over 7x7, fully connected. **Option B** shortcuts: a 1x1 projection (stride 2) with batch
  norm where the shape changes: 11,689,512 / 21,797,672 parameters (torchvision's layout and
  padding, so its weights map one to one). The stride-2 windows round down as torchvision's do
  (`fcnn.summary` notes the row or column each leaves unread).

Convolutions carry no bias (the batch norm after each has the shift); parameter counts are
weights + biases + batch norm's scale and shift, and the running statistics are state
(`model.init_state`). `resnet_no_bn` is fcnn's earlier ResNet-20-style net without batch norm.
"""

from fcnn.layers import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool2D,
    MaxPool2D,
    PadChannels,
    ReLU,
    residual,
    serial,
)


def conv_bn(width, kernel, stride=1, padding=0):
    """A bias-free convolution followed by batch norm."""
    return serial(Conv2D(width, kernel, stride=stride, padding=padding, use_bias=False),
                  BatchNorm())


def basic_block(width, stride=1, shortcut=None):
    """Two 3x3 conv + batch norm layers (ReLU between) added to `shortcut` (identity when None),
    then a ReLU: the basic block of He et al. 2015, Figure 5 (left)."""
    body = serial(conv_bn(width, 3, stride, 1), ReLU(), conv_bn(width, 3, 1, 1))
    return serial(residual(body, shortcut), ReLU())


def _cifar(n, num_classes):
    layers = [conv_bn(16, 3, 1, 1), ReLU()]
    for stage, width in enumerate((16, 32, 64)):
        for b in range(n):
            first = stage > 0 and b == 0
            # option A: subsample by 2 and zero-pad the channels; identity elsewhere
            shortcut = serial(MaxPool2D(1, stride=2), PadChannels(width)) if first else None
            layers.append(basic_block(width, 2 if first else 1, shortcut))
    return serial(*layers, GlobalAvgPool2D(), Dense(num_classes))


def resnet20(num_classes: int = 10):
    """ResNet-20 for 32x32x3 (n = 3): 269,722 parameters with 10 classes."""
    return _cifar(3, num_classes)


def resnet32(num_classes: int = 10):
    """ResNet-32 for 32x32x3 (n = 5): 464,154 parameters with 10 classes."""
    return _cifar(5, num_classes)


def resnet44(num_classes: int = 10):
    """ResNet-44 for 32x32x3 (n = 7): 658,586 parameters with 10 classes."""
    return _cifar(7, num_classes)


def resnet56(num_classes: int = 10):
    """ResNet-56 for 32x32x3 (n = 9): 853,018 parameters with 10 classes."""
    return _cifar(9, num_classes)


def resnet110(num_classes: int = 10):
    """ResNet-110 for 32x32x3 (n = 18): 1,727,962 parameters with 10 classes."""
    return _cifar(18, num_classes)


def bottleneck_block(width, stride=1, shortcut=None, expansion=4, stride_in_3x3=True):
    """1x1 (width) -> 3x3 (width) -> 1x1 (expansion * width) conv + batch norm layers (ReLU
    between) added to `shortcut` (identity when None), then a ReLU: the bottleneck block of He
    et al. 2015, Figure 5 (right). The block's `stride` is in its 3x3 convolution (torchvision's
    "ResNet v1.5", whose weights fcnn's map to) or, with `stride_in_3x3=False`, in its first
    1x1 (the paper's original)."""
    s3, s1 = (stride, 1) if stride_in_3x3 else (1, stride)
    body = serial(conv_bn(width, 1, s1), ReLU(), conv_bn(width, 3, s3, 1), ReLU(),
                  conv_bn(expansion * width, 1))
    return serial(residual(body, shortcut), ReLU())


def _imagenet(blocks, num_classes, bottleneck=False, stride_in_3x3=True):
    layers = [conv_bn(64, 7, 2, 3), ReLU(), MaxPool2D(3, stride=2, padding=1)]
    width_in = 64
    for stage, (width, n) in enumerate(zip((64, 128, 256, 512), blocks)):
        out = 4 * width if bottleneck else width
        for b in range(n):
            stride = 2 if stage > 0 and b == 0 else 1
            # option B: a projection where the shape changes, identity elsewhere
            shortcut = conv_bn(out, 1, stride) if stride != 1 or out != width_in else None
            layers.append(bottleneck_block(width, stride, shortcut, stride_in_3x3=stride_in_3x3)
                          if bottleneck else basic_block(width, stride, shortcut))
            width_in = out
    return serial(*layers, GlobalAvgPool2D(), Dense(num_classes))


def resnet18(num_classes: int = 1000):
    """ResNet-18 for 224x224x3 (2-2-2-2 basic blocks): 11,689,512 parameters."""
    return _imagenet((2, 2, 2, 2), num_classes)


def resnet34(num_classes: int = 1000):
    """ResNet-34 for 224x224x3 (3-4-6-3 basic blocks): 21,797,672 parameters."""
    return _imagenet((3, 4, 6, 3), num_classes)


def resnet50(num_classes: int = 1000, stride_in_3x3: bool = True):
    """ResNet-50 for 224x224x3 (3-4-6-3 bottleneck blocks): 25,557,032 parameters either way.
    Multiply-adds of its convolutions and fully connected layer: 4.09 G with the stride in the
    3x3 (v1.5, the default), 3.86 G with it in the first 1x1 (the paper's Table 1: 3.8 G)."""
    return _imagenet((3, 4, 6, 3), num_classes, True, stride_in_3x3)


def resnet101(num_classes: int = 1000, stride_in_3x3: bool = True):
    """ResNet-101 (3-4-23-3 bottleneck blocks): 44,549,160 parameters; 7.80 G multiply-adds
    (v1.5), 7.57 G with the stride in the first 1x1 (Table 1: 7.6 G)."""
    return _imagenet((3, 4, 23, 3), num_classes, True, stride_in_3x3)


def resnet152(num_classes: int = 1000, stride_in_3x3: bool = True):
    """ResNet-152 (3-8-36-3 bottleneck blocks): 60,192,808 parameters; 11.51 G multiply-adds
    (v1.5), 11.28 G with the stride in the first 1x1 (Table 1: 11.3 G)."""
    return _imagenet((3, 8, 36, 3), num_classes, True, stride_in_3x3)


def _plain_block(width, stride):
    body = serial(Conv2D(width, 3, stride=stride, padding=1), ReLU(),
                  Conv2D(width, 3, padding=1))
    # identity skip when shapes agree, a strided 1x1 projection when the block downsamples
    shortcut = None if stride == 1 else Conv2D(width, 1, stride=stride, use_bias=False)
    return serial(residual(body, shortcut), ReLU())


def resnet_no_bn(blocks_per_stage: int = 3, widths=(16, 32, 64), num_classes: int = 10):
    """A ResNet-20-style net *without* batch norm, for 32x32x3 (stateless; convolutions with
    biases): conv 3x3 -> [residual blocks] x stages (the first block of each later stage halves
    the size; a 1x1 projection shortcut there) -> global average pool -> dense.
    `blocks_per_stage=3` is ResNet-20's depth: 271,594 parameters."""
    layers = [Conv2D(widths[0], 3, padding=1), ReLU()]
    for stage, width in enumerate(widths):
        for b in range(blocks_per_stage):
            layers.append(_plain_block(width, 2 if stage > 0 and b == 0 else 1))
    size = 32 // 2 ** (len(widths) - 1)
    layers += [AvgPool2D(size), Flatten(), Dense(num_classes)]
    return serial(*layers)
