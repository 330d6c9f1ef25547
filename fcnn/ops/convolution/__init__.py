"""The convolution's three maps in one place: what each is, its rules, how it is computed.

The public ops (`conv1d`/`conv2d`/`conv3d`, their `_grad_input`/`_grad_kernel` maps and
`conv_transpose1d`/`2d`/`3d`) are in `fcnn.ops.conv`; they validate their arguments and call
the maps below. A reader looking for

- the maths and the transposition table (which map is whose transpose): `rules`;
- the rules as JAX primitives (JVP, transpose, batching) for forward and reverse mode: `primitives`;
- the same rules as `jax.custom_vjp` functions (reverse mode only): `custom_vjp`;
- how each map is computed (XLA's convolution, the phase split, im2col, taps, oneDNN) and how
  "auto" chooses: `algorithms`, with `fcnn.ops.tuning` (the measurements, cached on disk);
- the convolution with its bias and ReLU as one op (its own rules and native calls): `fused`
  and `fused_algorithms`.

Every module here is written once for any number of spatial axes.
"""
