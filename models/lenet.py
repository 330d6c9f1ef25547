"""LeNet-5 (after LeCun et al. 1998, with ReLU and max pooling) for 28x28x1 (MNIST): 61,706
parameters with 10 classes."""

from fcnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU, serial


def lenet5(num_classes: int = 10):
    """conv 6@5x5 pad 2 -> relu -> maxpool 2 -> conv 16@5x5 -> relu -> maxpool 2
    -> dense 120 -> relu -> dense 84 -> relu -> dense num_classes."""
    return serial(
        Conv2D(6, 5, padding=2), ReLU(), MaxPool2D(2),
        Conv2D(16, 5), ReLU(), MaxPool2D(2),
        Flatten(),
        Dense(120), ReLU(),
        Dense(84), ReLU(),
        Dense(num_classes),
    )
