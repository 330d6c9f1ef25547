"""Named networks built from fcnn's public API; each function returns a `fcnn.layers.Layer`.

Input shapes (per example): lenet5 and unet 28x28x1; dcgan_generator 1x1x100 (the latent
vector), dcgan_discriminator 64x64x3; cs231n_convnet, resnet20-110 and resnet_no_bn
32x32x3; alexnet 227x227x3; vgg (and vgg*_bn), alexnet_torchvision, zfnet, googlenet and
resnet18-152 224x224x3. `fcnn.weights` loads torchvision's weights into resnet18-152, vgg*,
vgg*_bn and alexnet_torchvision.
`INPUT_SHAPES` maps each name to it; `CLASSIFIERS` names those whose output is class scores.
"""

from models.alexnet import alexnet, alexnet_torchvision
from models.cs231n import cs231n_convnet
from models.dcgan import dcgan_discriminator, dcgan_generator
from models.googlenet import googlenet
from models.lenet import lenet5
from models.resnet import (
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet101,
    resnet110,
    resnet152,
    resnet_no_bn,
)
from models.unet import unet
from models.vgg import vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn
from models.zfnet import zfnet

INPUT_SHAPES = {
    "lenet5": (28, 28, 1),
    "cs231n_convnet": (32, 32, 3),
    "resnet20": (32, 32, 3),
    "resnet32": (32, 32, 3),
    "resnet44": (32, 32, 3),
    "resnet56": (32, 32, 3),
    "resnet110": (32, 32, 3),
    "resnet_no_bn": (32, 32, 3),
    "alexnet": (227, 227, 3),
    "vgg11": (224, 224, 3),
    "vgg13": (224, 224, 3),
    "vgg16": (224, 224, 3),
    "vgg19": (224, 224, 3),
    "alexnet_torchvision": (224, 224, 3),
    "vgg11_bn": (224, 224, 3),
    "vgg13_bn": (224, 224, 3),
    "vgg16_bn": (224, 224, 3),
    "vgg19_bn": (224, 224, 3),
    "zfnet": (224, 224, 3),
    "googlenet": (224, 224, 3),
    "resnet18": (224, 224, 3),
    "resnet34": (224, 224, 3),
    "resnet50": (224, 224, 3),
    "resnet101": (224, 224, 3),
    "resnet152": (224, 224, 3),
    "unet": (28, 28, 1),
    "dcgan_generator": (1, 1, 100),
    "dcgan_discriminator": (64, 64, 3),
}

# the networks whose output is class scores (`num_classes` of them), which the training,
# tuning and export scripts build; unet and the DCGAN pair map images to images or a logit
CLASSIFIERS = tuple(name for name in INPUT_SHAPES
                    if name not in ("unet", "dcgan_generator", "dcgan_discriminator"))

__all__ = [
    "CLASSIFIERS",
    "INPUT_SHAPES",
    "alexnet",
    "alexnet_torchvision",
    "cs231n_convnet",
    "dcgan_discriminator",
    "dcgan_generator",
    "googlenet",
    "lenet5",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet44",
    "resnet50",
    "resnet56",
    "resnet101",
    "resnet110",
    "resnet152",
    "resnet_no_bn",
    "unet",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "vgg19",
    "vgg19_bn",
    "zfnet",
]
