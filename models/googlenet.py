"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions", Table 1 and Figure 3) on
224x224x3, without the auxiliary classifiers: 6,998,552 parameters (convolutions with biases).

Every convolution and max pool pads "SAME", which gives the published sizes with windows that
tile their input exactly (the 7x7 stride-2 stem pads 2 before and 3 after: Caffe's symmetric 3
drops a row; its pools round up where fcnn's round down, so a stride-2 3x3 pool pads 0 and 1):

    conv 64@7x7 s2                224 -> 112
    max pool 3x3 s2               112 -> 56, LRN
    conv 64@1x1, conv 192@3x3, LRN
    max pool 3x3 s2               56 -> 28
    inception 3a (-> 256), 3b (-> 480)
    max pool 3x3 s2               28 -> 14
    inception 4a (-> 512), 4b, 4c, 4d (-> 528), 4e (-> 832)
    max pool 3x3 s2               14 -> 7
    inception 5a (-> 832), 5b (-> 1024)
    avg pool 7x7                  7 -> 1, dropout 40%, linear num_classes

An inception module runs four branches on its input and joins them along the channels: 1x1;
1x1 reduce then 3x3; 1x1 reduce then 5x5; 3x3 stride-1 max pool then a 1x1 projection — each
convolution followed by a ReLU.
"""

from fcnn.layers import (
    AvgPool2D,
    Concat,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    LocalResponseNorm,
    MaxPool2D,
    ReLU,
    parallel,
    serial,
)

# Table 1: #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
# Caffe's GoogLeNet LRN: size 5, alpha 1e-4 divided by the size, beta 0.75, k 1
_LRN = dict(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


def _conv(out, kernel, **kw):
    return serial(Conv2D(out, kernel, **kw), ReLU())


def inception(n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj):
    """One inception module (Figure 2b): four branches joined along the channels."""
    return serial(
        parallel(
            _conv(n1x1, 1),
            serial(_conv(n3x3_reduce, 1), _conv(n3x3, 3, padding="SAME")),
            serial(_conv(n5x5_reduce, 1), _conv(n5x5, 5, padding="SAME")),
            serial(MaxPool2D(3, 1, padding="SAME"), _conv(pool_proj, 1)),
        ),
        Concat(),
    )


def googlenet(num_classes: int = 1000, dropout: float = 0.4):
    """GoogLeNet as in Table 1 (layout in the module doc)."""
    return serial(
        _conv(64, 7, stride=2, padding="SAME"), MaxPool2D(3, 2, padding="SAME"),
        LocalResponseNorm(**_LRN),
        _conv(64, 1), _conv(192, 3, padding="SAME"), LocalResponseNorm(**_LRN),
        MaxPool2D(3, 2, padding="SAME"),
        inception(*MODULES["3a"]), inception(*MODULES["3b"]),
        MaxPool2D(3, 2, padding="SAME"),
        *(inception(*MODULES[m]) for m in ("4a", "4b", "4c", "4d", "4e")),
        MaxPool2D(3, 2, padding="SAME"),
        inception(*MODULES["5a"]), inception(*MODULES["5b"]),
        AvgPool2D(7, 1), Flatten(), Dropout(dropout), Dense(num_classes),
    )
