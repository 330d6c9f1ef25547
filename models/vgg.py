"""VGG configurations A, B, D, E (Simonyan & Zisserman 2014, "Very Deep Convolutional Networks for
Large-Scale Image Recognition"): 3x3 pad 1 convs, 2x2 pools."""

from fcnn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, serial

# numbers are conv widths, "M" a 2x2 max pool
CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "B": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "E": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"),
}


def vgg(config: str, num_classes: int = 1000, dropout: float = 0.5):
    """VGG for 224x224x3: the conv stack of `CONFIGS[config]`, then FC 4096, 4096 (dropout
    before each), num_classes."""
    layers = []
    for item in CONFIGS[config]:
        layers += [MaxPool2D(2)] if item == "M" else [Conv2D(item, 3, padding=1), ReLU()]
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
