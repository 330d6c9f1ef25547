"""AlexNet (Krizhevsky et al. 2012) as one tower on 227x227x3, the layout the CS231n notes give
(cs231n.github.io/convolutional-networks): 62,378,344 parameters.

`alexnet_torchvision` is the variant torchvision ships weights for (after Krizhevsky 2014, "One
weird trick for parallelizing convolutional neural networks"): 64-192-384-256-256 filters, no
local response normalisation, on 224x224x3: 61,100,840 parameters."""

from fcnn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
    serial,
)


def alexnet(num_classes: int = 1000, dropout: float = 0.5):
    """CONV1 96@11x11 s4 -> 55x55x96, NORM, POOL 3x3 s2 -> 27; CONV2 256@5x5 p2, NORM, POOL -> 13;
    CONV3 384@3x3 p1; CONV4 384@3x3 p1; CONV5 256@3x3 p1; POOL -> 6x6x256; FC 4096, 4096 (with
    dropout), num_classes."""
    return serial(
        Conv2D(96, 11, stride=4), ReLU(), LocalResponseNorm(), MaxPool2D(3, 2),
        Conv2D(256, 5, padding=2), ReLU(), LocalResponseNorm(), MaxPool2D(3, 2),
        *conv3_to_classifier(num_classes, dropout),
    )


def alexnet_torchvision(num_classes: int = 1000, dropout: float = 0.5):
    """torchvision's AlexNet on 224x224x3: CONV1 64@11x11 s4 p2 -> 55x55, POOL 3x3 s2 -> 27;
    CONV2 192@5x5 p2, POOL -> 13; CONV3 384@3x3 p1; CONV4 256@3x3 p1; CONV5 256@3x3 p1; POOL ->
    6x6x256; FC 4096, 4096 (dropout before each), num_classes. torchvision's adaptive average
    pool to 6x6 before the classifier is the identity at 224x224 (and 227x227) and is left out."""
    return serial(
        Conv2D(64, 11, stride=4, padding=2), ReLU(), MaxPool2D(3, 2),
        Conv2D(192, 5, padding=2), ReLU(), MaxPool2D(3, 2),
        Conv2D(384, 3, padding=1), ReLU(),
        Conv2D(256, 3, padding=1), ReLU(),
        Conv2D(256, 3, padding=1), ReLU(), MaxPool2D(3, 2),
        *_classifier(num_classes, dropout),
    )


def _classifier(num_classes: int, dropout: float):
    """Flatten, FC 4096, 4096 (dropout before each, ReLU after), num_classes: the classifier
    of both AlexNets and ZF Net."""
    return (
        Flatten(),
        Dropout(dropout), Dense(4096), ReLU(),
        Dropout(dropout), Dense(4096), ReLU(),
        Dense(num_classes),
    )


def conv3_to_classifier(num_classes: int, dropout: float):
    """The layers from CONV3 on, which ZF Net (`models.zfnet`) keeps from AlexNet: three 3x3
    convolutions (384, 384, 256) on 13x13, POOL 3x3 s2 -> 6x6x256, FC 4096, 4096 (dropout
    before each), num_classes."""
    return (
        Conv2D(384, 3, padding=1), ReLU(),
        Conv2D(384, 3, padding=1), ReLU(),
        Conv2D(256, 3, padding=1), ReLU(), MaxPool2D(3, 2),
        *_classifier(num_classes, dropout),
    )
