"""Data augmentation inside the jitted train step: traceable functions of a PRNG key and a batch.

`fcnn.data` stays numpy I/O (files, arrays, batch order); what runs on the accelerator, per step,
lives here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fcnn import _args


def random_shift(key, x, max_shift: int = 2):
    """Translate each image of an NHWC batch by an independent random offset in
    `[-max_shift, max_shift]` pixels along each axis (zero fill): the classic MNIST augmentation.

    Args:
      key: a PRNG key; one offset pair per image is drawn from it.
      x: an `(N, H, W, C)` batch.
      max_shift: int >= 0; 0 returns `x` unchanged.
    """
    max_shift = _args.as_int(max_shift, "random_shift", "max_shift", minimum=0)
    if x.ndim != 4:
        raise ValueError(f"random_shift: `x` must be an (N, H, W, C) batch, got shape "
                         f"{tuple(x.shape)}.")
    if max_shift == 0:
        return x
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * max_shift + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)
