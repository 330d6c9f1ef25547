"""U-Net (Ronneberger, Fischer & Brox 2015, "U-Net: convolutional networks for biomedical image
segmentation"), small: an encoder of two 3x3 convolutions and a 2x2 max pool per level, a
decoder of a 2x2 stride-2 transposed convolution ("up-convolution") whose output is
concatenated with the encoder's features at that level (the skip connection) before two 3x3
convolutions, and a 1x1 convolution to the output channels. Unlike the paper's unpadded
convolutions (572 -> 388 pixels, the skip features cropped), the convolutions are padded
("SAME"), so the output has the input's size and no crop is needed; batch norm follows each
convolution, as most modern U-Nets do. For 28x28 (MNIST) or 32x32 inputs with the default two
levels (sizes divisible by 4)."""

from fcnn.layers import (
    BatchNorm,
    Concat,
    Conv2D,
    ConvTranspose2D,
    Identity,
    MaxPool2D,
    ReLU,
    parallel,
    serial,
)


def _block(c):
    return serial(Conv2D(c, 3, padding="SAME", use_bias=False), BatchNorm(), ReLU(),
                  Conv2D(c, 3, padding="SAME", use_bias=False), BatchNorm(), ReLU())


def unet(out_channels: int = 1, width: int = 16, depth: int = 2):
    """`(H, W, C)` -> `(H, W, out_channels)` (no activation at the output: logits or values),
    H and W divisible by 2**depth. Level l has width * 2**l channels; the bottom one
    width * 2**depth. With the defaults on (28, 28, 1): 117,073 parameters (by level: encoder
    blocks 2,512, 13,952 and the bottom's 55,552; up-convolutions 8,224 and 2,064; decoder
    blocks 27,776 and 6,976; the 1x1 output 17) and 640 state entries (batch norm's running
    statistics)."""

    def level(d):
        c = width * 2 ** d
        if d == depth:  # the bottom: no skip
            return _block(c)
        inner = serial(MaxPool2D(2), level(d + 1), ConvTranspose2D(c, 2, stride=2))
        return serial(_block(c), parallel(Identity(), inner), Concat(), _block(c))

    return serial(level(0), Conv2D(out_channels, 1))
