"""ZF Net (Zeiler & Fergus 2013, Figure 3) on 224x224x3: 62,357,608 parameters.

Each published size and the padding that gives it (output = floor((W + pads - F) / S) + 1):

    conv1 96@7x7 s2, pads 0/1     224 -> 110   ((224 + 1 - 7) / 2 + 1)
    pool 3x3 s2, pads 0/1         110 -> 55, then contrast normalisation (LRN)
    conv2 256@5x5 s2, no pads     55 -> 26
    pool 3x3 s2, pads 0/1         26 -> 13, LRN
    conv3 384, conv4 384, conv5 256 @3x3, pads 1/1: 13 -> 13
    pool 3x3 s2, no pads          13 -> 6: 6x6x256
    FC 4096, FC 4096 (dropout 0.5 before each), FC num_classes
"""

from fcnn.layers import Conv2D, LocalResponseNorm, MaxPool2D, ReLU, serial
from models.alexnet import conv3_to_classifier

_LOW_HIGH = ((0, 1), (0, 1))  # one row and column of padding after, none before


def zfnet(num_classes: int = 1000, dropout: float = 0.5):
    """ZF Net: AlexNet with a 7x7 stride-2 first layer (the paper's visualisations showed
    AlexNet's 11x11 stride 4 aliased) and stride 2 in the second; layout in the module doc."""
    return serial(
        Conv2D(96, 7, stride=2, padding=_LOW_HIGH), ReLU(),
        MaxPool2D(3, 2, padding=_LOW_HIGH), LocalResponseNorm(),
        Conv2D(256, 5, stride=2), ReLU(),
        MaxPool2D(3, 2, padding=_LOW_HIGH), LocalResponseNorm(),
        *conv3_to_classifier(num_classes, dropout),
    )
