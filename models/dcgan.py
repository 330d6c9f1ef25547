"""DCGAN (Radford, Metz & Chintala 2015, "Unsupervised representation learning with deep
convolutional generative adversarial networks"): a generator of 64x64 images from a latent
vector, fractionally strided (transposed) convolutions only, and a discriminator of strided
convolutions only; batch norm in both but at the generator's output and the discriminator's
input, ReLU in the generator (Tanh at its output), LeakyReLU(0.2) in the discriminator.

The layout is the authors' reference implementation (dcgan.torch) and PyTorch's DCGAN example:
the latent vector enters as a 1x1 image of `latent` channels, a 4x4 transposed convolution
makes it 4x4 with `8 * width` channels, and each 4x4 stride-2 padding-1 transposed convolution
doubles the size; the convolutions have no bias (batch norm follows them). With the defaults
(a latent of 100, width 64, 3 channels) the generator has 3,576,704 parameters and the discriminator
2,765,568 (PyTorch's example's counts). The paper's Figure 1 draws 1024 channels at 4x4:
`width=128`.
"""

from fcnn.layers import (
    BatchNorm,
    Conv2D,
    ConvTranspose2D,
    Flatten,
    LeakyReLU,
    ReLU,
    Tanh,
    serial,
)


def dcgan_generator(width: int = 64, channels: int = 3):
    """z `(1, 1, latent)` -> image `(64, 64, channels)` in [-1, 1] (Tanh): 4x4 transposed conv
    to 8·width channels, then 8·width -> 4·width -> 2·width -> width -> channels, each a 4x4
    stride-2 transposed convolution (8 -> 16 -> 32 -> 64 pixels), BatchNorm and ReLU between.
    The latent size is the input's channels (the paper's 100: input shape (1, 1, 100))."""
    def up(c):
        return [ConvTranspose2D(c, 4, stride=2, padding=1, use_bias=False), BatchNorm(), ReLU()]

    return serial(
        ConvTranspose2D(8 * width, 4, use_bias=False), BatchNorm(), ReLU(),   # 4x4
        *up(4 * width), *up(2 * width), *up(width),                            # 8, 16, 32
        ConvTranspose2D(channels, 4, stride=2, padding=1, use_bias=False), Tanh(),  # 64x64
    )


def dcgan_discriminator(width: int = 64):
    """image `(64, 64, channels)` (any number of channels: the input shape's) -> one logit
    `(1,)` (the probability of "real" is its sigmoid; a logistic loss on the logit is the
    stable form of the paper's): 4x4 stride-2
    padding-1 convolutions channels -> width -> 2·width -> 4·width -> 8·width (64 -> 4 pixels),
    LeakyReLU(0.2) after each and BatchNorm after all but the first, then a 4x4 convolution to
    one channel."""
    def down(c, norm=True):
        return [Conv2D(c, 4, stride=2, padding=1, use_bias=False),
                *([BatchNorm()] if norm else []), LeakyReLU(0.2)]

    return serial(
        *down(width, norm=False), *down(2 * width), *down(4 * width), *down(8 * width),
        Conv2D(1, 4, use_bias=False), Flatten(),
    )
