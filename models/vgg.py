"""VGG configurations A, B, D, E (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for
Large-Scale Image Recognition"): 3x3 pad 1 convs, 2x2 pools.

`vgg11_bn` ... `vgg19_bn` are torchvision's variants with batch norm after every convolution
(the convolutions keep their biases, as torchvision's do), whose weights `fcnn.weights` loads.
torchvision's VGG also has an adaptive average pool to 7x7 before the classifier: the identity
on 224x224 inputs (the map is 7x7 already), so fcnn's networks leave it out; on another input
size the classifier's input differs and torchvision's weights do not fit.
"""

from fcnn.layers import BatchNorm, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, serial

# numbers are conv widths, "M" a 2x2 max pool
CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def vgg(config: str, num_classes: int = 1000, dropout: float = 0.5, batch_norm: bool = False):
    """VGG for 224x224x3: the conv stack of `CONFIGS[config]` (each convolution followed by a
    BatchNorm when `batch_norm`), then FC 4096, 4096 (dropout after each, with its ReLU),
    num_classes."""
    layers = []
    for item in CONFIGS[config]:
        if item == "M":
            layers.append(MaxPool2D(2))
        else:
            layers += [Conv2D(item, 3, padding=1), *([BatchNorm()] if batch_norm else []), ReLU()]
    layers += [
        Flatten(),
        Dense(4096), ReLU(), Dropout(dropout),
        Dense(4096), ReLU(), Dropout(dropout),
        Dense(num_classes),
    ]
    return serial(*layers)


def vgg11(num_classes: int = 1000):
    """Configuration A: 132,863,336 parameters."""
    return vgg("A", num_classes)


def vgg13(num_classes: int = 1000):
    """Configuration B: 133,047,848 parameters."""
    return vgg("B", num_classes)


def vgg16(num_classes: int = 1000):
    """Configuration D: 138,357,544 parameters (as in the CS231n notes' VGGNet table)."""
    return vgg("D", num_classes)


def vgg19(num_classes: int = 1000):
    """Configuration E: 143,667,240 parameters."""
    return vgg("E", num_classes)


def vgg11_bn(num_classes: int = 1000):
    """Configuration A with batch norm (torchvision's `vgg11_bn`): 132,868,840 parameters."""
    return vgg("A", num_classes, batch_norm=True)


def vgg13_bn(num_classes: int = 1000):
    """Configuration B with batch norm (torchvision's `vgg13_bn`): 133,053,736 parameters."""
    return vgg("B", num_classes, batch_norm=True)


def vgg16_bn(num_classes: int = 1000):
    """Configuration D with batch norm (torchvision's `vgg16_bn`): 138,365,992 parameters."""
    return vgg("D", num_classes, batch_norm=True)


def vgg19_bn(num_classes: int = 1000):
    """Configuration E with batch norm (torchvision's `vgg19_bn`): 143,678,248 parameters."""
    return vgg("E", num_classes, batch_norm=True)
