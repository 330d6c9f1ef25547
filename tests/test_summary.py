"""fcnn.summary: rows computed by hand, the tiling flag, combinators, no allocation."""

from __future__ import annotations

import gc

import jax

import fcnn
import models
from fcnn import layers as L


def test_lenet_rows_by_hand():
    s = fcnn.summary(models.lenet5(), (28, 28, 1))
    rows = {r.name: r for r in s.rows}
    conv1, pool1, conv2 = rows["0 Conv2D"], rows["2 MaxPool2D"], rows["3 Conv2D"]
    assert conv1.output_shape == (28, 28, 6) and conv1.params == 5 * 5 * 1 * 6 + 6
    assert conv1.flops == 2 * 28 * 28 * 6 * 25 and conv1.activations == 28 * 28 * 6
    assert conv1.receptive_field == (5, 5) and pool1.receptive_field == (6, 6)
    assert conv2.params == 5 * 5 * 6 * 16 + 16 and conv2.receptive_field == (6 + 4 * 2,) * 2
    # counted into the conv, as in the CS231n VGG table; and run inside it (serial's fusion)
    assert rows["1 ReLU (fused into 0)"].activations == 0
    assert "4 ReLU (fused into 3)" in rows and "8 ReLU" in rows  # Dense -> ReLU is not fused
    assert s.rows[0].name == "Input" and s.rows[0].activations == 784
    assert s.total_params == 61_706
    assert s.total_activations == 784 + 4704 + 1176 + 1600 + 400 + 120 + 84 + 10
    text = str(s)
    assert "Conv2D" in text and "61,706" in text.splitlines()[-1]
    header, rule = text.splitlines()[:2]
    assert len(rule) == len(header)


def test_flags_windows_that_do_not_tile():
    s = fcnn.summary(L.serial(L.Conv2D(2, 3, stride=3), L.ReLU()), (7, 7, 1))
    conv = s.rows[1]
    assert conv.output_shape == (2, 2, 2)
    assert "drops 1 row(s), 1 col(s)" in conv.note
    assert "! window 3x3 stride 3x3 does not tile 7x7" in str(s)
    assert not fcnn.summary(L.Conv2D(2, 3, stride=2), (7, 7, 1)).rows[1].note


def test_fused_pairs_are_named_at_every_depth():
    """serial's Conv2D -> ReLU pairs, inside combinators too; a ReLU after a ReLU, or after a
    Conv2D in another serial, is not fused."""
    net = L.serial(L.Conv2D(2, 3), L.ReLU(), L.ReLU(),
                   L.residual(L.serial(L.Conv2D(2, 3, padding=1), L.ReLU())), L.Conv2D(2, 1),
                   L.serial(L.ReLU()))
    names = [r.name for r in fcnn.summary(net, (8, 8, 1)).rows]
    assert names == ["Input", "0 Conv2D", "1 ReLU (fused into 0)", "2 ReLU",
                     "3.block.0 Conv2D", "3.block.1 ReLU (fused into 3.block.0)", "4 Conv2D",
                     "5.0 ReLU"]


def test_combinators_are_walked():
    s = fcnn.summary(models.resnet_no_bn(blocks_per_stage=1), (32, 32, 3))
    names = [r.name for r in s.rows]
    assert "2.0.block.0 Conv2D" in names and "3.0.shortcut Conv2D" in names
    params, _ = models.resnet_no_bn(blocks_per_stage=1).init(jax.random.key(0), (32, 32, 3))
    assert s.total_params == sum(p.size for p in jax.tree_util.tree_leaves(params))
    par = fcnn.summary(L.parallel(L.Conv2D(2, 1), L.MaxPool2D(2)), (4, 4, 3))
    assert [r.name for r in par.rows] == ["Input", "0 Conv2D", "1 MaxPool2D"]


def test_vgg16_summary_allocates_nothing():
    gc.collect()
    before = sum(a.nbytes for a in jax.live_arrays())
    s = fcnn.summary(models.vgg16(), (224, 224, 3))
    gc.collect()
    after = sum(a.nbytes for a in jax.live_arrays())
    assert s.total_params == 138_357_544
    assert after - before < 1_000_000  # 138M float32 parameters would be 553 MB
