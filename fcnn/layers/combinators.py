"""Combinators: `serial`, `parallel`, `residual`. Children's params nest as tuples.

Children may be any Layer, a user's bare `Layer(init, apply)` included (its shape comes from
`jax.eval_shape` of its init); `with_ops` rebinds every fcnn child. A combinator with a stateful
child is stateful: its state is the tuple of its children's (`()` for a stateless child), laid
out like its params, and its apply threads each child's state through and returns the new ones.
"""

from __future__ import annotations

import functools

import jax

from fcnn import init as initializers
from fcnn.layers._base import (
    RESIDUAL_RELU,
    Layer,
    LayerError,
    as_layer,
    make,
    missing_state,
    with_ops,
)


def _keys(key, n):
    return (None,) * n if key is None else tuple(jax.random.split(key, n))


def _children(op, layers):
    if not layers:
        raise ValueError(f"{op}: needs at least one layer.")
    return tuple(as_layer(c, op, f"layers[{i}]") for i, c in enumerate(layers))


def _under(segment, fn, *args):
    """`fn(*args)` for a child; its LayerError re-raised one level deeper, naming `segment`."""
    try:
        return fn(*args)
    except LayerError as e:
        raise e.under(segment) from None


def _rebound(children, segments, module):
    """`with_ops` of each child, its errors naming the child's position."""
    return [_under(s, with_ops, child, module) for child, s in zip(children, segments)]


def _states(op, state, n):
    """A combinator's `state` argument checked: a tuple of its `n` children's states."""
    if state is None:
        raise missing_state(op)
    if not isinstance(state, tuple) or len(state) != n:
        got = f"a tuple of {len(state)}" if isinstance(state, tuple) else type(state).__name__
        raise ValueError(f"{op}: `state` must be the tuple of its {n} children's states (from "
                         f"init_state), got {got}.")
    return state


def _stateful(layers, init_state):
    """`init_state` when some child is stateful, else None (the combinator is stateless)."""
    return init_state if any(c.stateful for c in layers) else None


def fusions(layers) -> dict[int, object]:
    """The pairs `serial` runs as one op: position i -> the apply of layers i and i + 1 together
    (a Conv2D followed by a ReLU: `conv2d(..., activation="relu")`; a BatchNorm followed by a
    ReLU: `batch_norm(..., activation="relu")`, whose apply takes and returns the BatchNorm's
    state). Each child keeps its own params (the ReLU's `{}`) and state, so params, states,
    checkpoints and their hashes do not change."""
    plan, i = {}, 0
    while i < len(layers) - 1:
        fused = (layers[i].info.fused or {}).get(layers[i + 1].info.kind)
        if fused is not None and not layers[i + 1].stateful:
            plan[i] = fused
            i += 2
        else:
            i += 1
    return plan


def serial(*layers: Layer) -> Layer:
    """Compose layers in order; params are the tuple of the children's. The key (init and
    apply) is split among the children. A Conv2D or a BatchNorm followed by a ReLU runs as one
    op (`fusions`), and so does a serial ending in one followed by a ReLU: the same params,
    state and maths."""
    layers = _children("serial", layers)
    segments = [f"serial[{i}]" for i in range(len(layers))]
    plan = fusions(layers)
    last = len(layers) - 1

    def run(params, x, key, train, state, then=None):
        """The children in order, the fused pairs as one op; `then`, when given, runs the last
        child fused with the layer after this serial. `state` is None when no child is
        stateful; a fused pair's second layer is stateless, its state comes back as it came."""
        new = None if state is None else list(state)
        keys, i = _keys(key, len(layers)), 0
        while i < len(layers):
            fn = plan.get(i) or (then if i == last else None) or layers[i].apply
            if new is not None and layers[i].stateful:
                x, new[i] = fn(params[i], x, key=keys[i], train=train, state=state[i])
            else:
                x = fn(params[i], x, key=keys[i], train=train)
            i += 2 if i in plan else 1
        return x if new is None else (x, tuple(new))

    def shape(input_shape):
        for child, segment in zip(layers, segments):
            input_shape = _under(segment, child.info.shape, input_shape)
        return input_shape

    def init(key, input_shape):
        params = []
        for child, k, segment in zip(layers, initializers.split(key, len(layers)), segments):
            p, input_shape = _under(segment, child.init, k, input_shape)
            params.append(p)
        return tuple(params), input_shape

    def apply(params, x, *, key=None, train=False):  # no child is stateful
        return run(params, x, key, train, None)

    def init_state(input_shape):
        states = []
        for child, segment in zip(layers, segments):
            states.append(_under(segment, child.init_state, input_shape))
            input_shape = _under(segment, child.info.shape, input_shape)
        return tuple(states)

    def apply_stateful(params, x, *, key=None, train=False, state=None):
        return run(params, x, key, train, _states("serial", state, len(layers)))

    def fused_last(then):
        """This serial with its last child fused with the layer after it (the child's own
        fusion, e.g. a serial(Conv2D, BatchNorm) followed by a ReLU); keywords beyond the
        usual (a residual's `residual`) go to the last child's fused apply."""
        if any(c.stateful for c in layers):
            def apply(params, x, *, key=None, train=False, state=None, **extra):
                return run(params, x, key, train, _states("serial", state, len(layers)),
                           functools.partial(then, **extra))
        else:
            def apply(params, x, *, key=None, train=False, **extra):
                return run(params, x, key, train, None, functools.partial(then, **extra))
        return apply

    own = layers[last].info.fused if last - 1 not in plan else None
    fused = {kind: fused_last(then) for kind, then in own.items()} if own else None

    stateful = _stateful(layers, init_state)
    return make("serial", {}, shape, init, apply if stateful is None else apply_stateful,
                children=layers, init_state=stateful, fused=fused,
                rebind=lambda m: serial(*_rebound(layers, segments, m)))


def parallel(*layers: Layer) -> Layer:
    """Apply each layer to the same input; output (and out_shape) is the tuple of theirs."""
    layers = _children("parallel", layers)
    segments = [f"parallel[{i}]" for i in range(len(layers))]

    def shape(input_shape):
        return tuple(_under(s, c.info.shape, input_shape) for c, s in zip(layers, segments))

    def init(key, input_shape):
        pairs = [_under(s, child.init, k, input_shape) for child, k, s in
                 zip(layers, initializers.split(key, len(layers)), segments)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def apply(params, x, *, key=None, train=False):
        return tuple(
            child.apply(p, x, key=k, train=train)
            for child, p, k in zip(layers, params, _keys(key, len(layers)))
        )

    def init_state(input_shape):
        return tuple(_under(s, c.init_state, input_shape) for c, s in zip(layers, segments))

    def apply_stateful(params, x, *, key=None, train=False, state=None):
        state = _states("parallel", state, len(layers))
        pairs = [child.apply_with_state(p, s, x, key=k, train=train)
                 for child, p, s, k in zip(layers, params, state, _keys(key, len(layers)))]
        return tuple(y for y, _ in pairs), tuple(s for _, s in pairs)

    stateful = _stateful(layers, init_state)
    return make("parallel", {}, shape, init, apply if stateful is None else apply_stateful,
                children=layers, init_state=stateful,
                rebind=lambda m: parallel(*_rebound(layers, segments, m)))


def residual(block: Layer, shortcut: Layer | None = None) -> Layer:
    """`block(x) + shortcut(x)`, the skip connection of He et al. 2015, "Deep Residual Learning
    for Image Recognition" (identity shortcut when None). Params: `(block_params,
    shortcut_params)`; the shortcut's are `{}` when it is the identity."""
    block = as_layer(block, "residual", "block")
    shortcut = None if shortcut is None else as_layer(shortcut, "residual", "shortcut")

    def shape(input_shape):
        out = _under("residual.block", block.info.shape, input_shape)
        skip = input_shape if shortcut is None else _under(
            "residual.shortcut", shortcut.info.shape, input_shape)
        if tuple(out) != tuple(skip):
            raise LayerError("residual", f"block output {tuple(out)} and shortcut output "
                                         f"{tuple(skip)} must match to be added. Give the "
                                         "shortcut a projection (e.g. a 1x1 Conv2D).")
        return tuple(out)

    def init(key, input_shape):
        out = shape(input_shape)
        k_block, k_short = initializers.split(key)
        p_block, _ = _under("residual.block", block.init, k_block, input_shape)
        p_short = {} if shortcut is None else _under(
            "residual.shortcut", shortcut.init, k_short, input_shape)[0]
        return (p_block, p_short), out

    def apply(params, x, *, key=None, train=False):
        k_block, k_short = _keys(key, 2)
        y = block.apply(params[0], x, key=k_block, train=train)
        skip = x if shortcut is None else shortcut.apply(params[1], x, key=k_short, train=train)
        return y + skip

    def init_state(input_shape):  # (block's, shortcut's): () for the identity, like its {}
        s_block = _under("residual.block", block.init_state, input_shape)
        return s_block, (() if shortcut is None else
                         _under("residual.shortcut", shortcut.init_state, input_shape))

    def apply_stateful(params, x, *, key=None, train=False, state=None):
        s_block, s_short = _states("residual", state, 2)
        k_block, k_short = _keys(key, 2)
        y, s_block = block.apply_with_state(params[0], s_block, x, key=k_block, train=train)
        skip = x
        if shortcut is not None:
            skip, s_short = shortcut.apply_with_state(params[1], s_short, x, key=k_short,
                                                      train=train)
        return y + skip, (s_block, s_short)

    # relu(block(x) + skip) as the block's last op, when that op offers it (a BatchNorm)
    add_relu = (block.info.fused or {}).get(RESIDUAL_RELU)

    def apply_relu(params, x, *, key=None, train=False):
        k_block, k_short = _keys(key, 2)
        skip = x if shortcut is None else shortcut.apply(params[1], x, key=k_short, train=train)
        return add_relu(params[0], x, key=k_block, train=train, residual=skip)

    def apply_relu_stateful(params, x, *, key=None, train=False, state=None):
        s_block, s_short = _states("residual", state, 2)
        k_block, k_short = _keys(key, 2)
        skip = x
        if shortcut is not None:
            skip, s_short = shortcut.apply_with_state(params[1], s_short, x, key=k_short,
                                                      train=train)
        if block.stateful:
            y, s_block = add_relu(params[0], x, key=k_block, train=train, state=s_block,
                                  residual=skip)
        else:
            y = add_relu(params[0], x, key=k_block, train=train, residual=skip)
        return y, (s_block, s_short)

    children = (block,) if shortcut is None else (block, shortcut)
    segments = ("residual.block", "residual.shortcut")
    stateful = _stateful(children, init_state)
    fused = None if add_relu is None else {
        "ReLU": apply_relu if stateful is None else apply_relu_stateful}
    return make("residual", {"identity_shortcut": shortcut is None}, shape, init,
                apply if stateful is None else apply_stateful, children=children,
                init_state=stateful, fused=fused,
                rebind=lambda m: residual(*_rebound(children, segments, m)))
