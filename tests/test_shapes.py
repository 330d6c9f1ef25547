"""fcnn.shapes: output sizes against the CS231n notes, the strict tiling check, receptive fields."""

from __future__ import annotations

import numpy as np
import pytest

from fcnn import layers as L
from fcnn import shapes


def test_cs231n_notes_sizes():
    """The CS231n notes' examples among them (7x7 input, 3x3 filter; AlexNet's CONV1)."""
    assert shapes.conv_output_size(7, 3) == 5
    assert shapes.conv_output_size(7, 3, stride=2) == 3
    assert shapes.conv_output_size(7, 3, stride=3) == 2  # floors like every framework
    assert shapes.conv_output_size(32, 5, padding=2) == 32
    assert shapes.conv_output_size(227, 11, stride=4) == 55  # AlexNet CONV1
    assert shapes.conv_output_size(7, 3, stride=1, padding=1) == 7
    assert shapes.conv_output_size(28, 5, padding="SAME") == 28
    assert shapes.conv_output_size(28, 5, padding=(0, 1), dilation=2) == 21


def test_strict_explains_the_paddings_that_fit():
    with pytest.raises(ValueError, match=r"conv_output_size: a 3-wide window with stride 3 does "
                                         r"not tile an input of 7 .* 1 cell\(s\) would be dropped"
                                         r"\. Total paddings that fit: 2, 5, 8"):
        shapes.conv_output_size(7, 3, stride=3, strict=True)
    assert shapes.conv_output_size(7, 3, stride=3, padding=(1, 1), strict=True) == 3


def test_strict_and_size_errors():
    with pytest.raises(ValueError, match="larger than the padded input"):
        shapes.conv_output_size(4, 5)
    with pytest.raises(ValueError, match="`stride` must be an int >= 1, got 0"):
        shapes.conv_output_size(8, 3, stride=0)
    with pytest.raises(TypeError, match=r"`kernel` must be an int >= 1, got tuple \(3, 3\)"):
        shapes.conv_output_size(8, (3, 3))  # was taken as 3
    assert shapes.conv_output_size(8, 3, padding=np.array([1, 0])) == 7  # (lo, hi), as a tuple


def test_receptive_fields():
    three = L.serial(*[L.Conv2D(4, 3) for _ in range(3)])  # 3 stacked 3x3 see 7x7 (CS231n notes)
    assert shapes.receptive_field(three, (16, 16, 1)) == (7, 7)
    dilated = L.serial(L.Conv2D(4, 3), L.Conv2D(4, 3, dilation=2), L.Conv2D(4, 3, dilation=4))
    assert shapes.receptive_field(dilated, (32, 32, 1)) == (15, 15)
    strided = L.serial(L.Conv2D(4, 5, stride=2), L.MaxPool2D(2), L.Conv2D(4, (3, 1)))
    assert shapes.receptive_field(strided, (32, 32, 1)) == (5 + 2 + 2 * 4, 5 + 2)
    branchy = L.parallel(L.Conv2D(2, 1), L.Conv2D(2, 5, padding=2))
    assert shapes.receptive_field(branchy, (8, 8, 1)) == (5, 5)
    assert shapes.receptive_field(L.serial(L.Flatten(), L.Dense(3)), (9, 8, 1)) == (9, 8)
