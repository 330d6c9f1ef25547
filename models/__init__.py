"""Named networks built from fcnn's public API (each function returns a ``Layer``).

The seeds' networks (LeNet-5, AlexNet, VGG, a small ResNet) arrive with ``fcnn.layers``.
"""

__all__: list[str] = []
