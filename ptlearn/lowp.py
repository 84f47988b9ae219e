"""Low-precision products with float32 accumulation, and 16-bit weights kept as uint16 bits.

`matmul` / `einsum` multiply in a low-precision dtype (bf16) with a custom VJP whose backward
multiplies in that dtype too; their outputs carry checkpoint names (WEIGHT_MATMUL,
ACTIVATION_MATMUL) that gpt.REMAT_POLICIES save. `bits` / `weight` move 16-bit floats through a
layer scan as uint16, which XLA slices in place. layers.py builds the blocks on these.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.ad_checkpoint import checkpoint_name

Dtype = jnp.dtype | str


def weight(value: jax.Array, dtype: Dtype) -> jax.Array:
    """A parameter as floats: uint16 bits (16-bit weights sliced from a scan) read as `dtype`."""
    if value.dtype == jnp.uint16:
        return jax.lax.bitcast_convert_type(value, dtype)
    return value


def bits(a: jax.Array) -> jax.Array:
    """16-bit floats as uint16 bits (`weight` reads them back); other arrays as they are.

    XLA:CPU moves bfloat16 buffers through loops badly: a scan slicing a bf16 stack converts
    all of it to float32, and stacking into one (a scan's residuals) copies the whole stack
    per step; an integer buffer is sliced and updated in place.
    """
    if is_16bit_float(a.dtype):
        return jax.lax.bitcast_convert_type(a, jnp.uint16)
    return a


def host_bits(a: np.ndarray) -> np.ndarray:
    """`bits` of a host array, as a numpy view (free: no copy, no device)."""
    a = np.asarray(a)
    return a.view(np.uint16) if is_16bit_float(a.dtype) else a


def is_16bit_float(dtype: Dtype) -> bool:
    """Whether `dtype` is a 16-bit float (bfloat16, float16): what `bits` packs."""
    return jnp.issubdtype(dtype, jnp.floating) and jnp.dtype(dtype).itemsize == 2


# Checkpoint names of the low-precision products' outputs (custom VJPs hide their dots from
# the dot-based remat policies, gpt.REMAT_POLICIES).
WEIGHT_MATMUL = "weight_matmul"
ACTIVATION_MATMUL = "activation_matmul"


class _MatmulSpec(NamedTuple):
    """The static half of a low-precision matmul (hashable: custom_vjp's nondiff argument)."""

    in_dims: int
    transpose_kernel: bool
    matmul_dtype: str
    kernel_dtype: str  # what uint16 kernel bits hold
    x_dtype: str  # of the input, hence of its cotangent


def _as_matrices(spec: _MatmulSpec, x: jax.Array, kernel: jax.Array):
    """x -> [M, K]; kernel (floats) -> [K, N] or, transposed, [N, K]; and the output's shape."""
    if spec.transpose_kernel:
        split = kernel.ndim - spec.in_dims
        out_shape, k = kernel.shape[:split], math.prod(kernel.shape[split:])
        b = kernel.reshape(-1, k)
    else:
        out_shape, k = kernel.shape[spec.in_dims :], math.prod(kernel.shape[: spec.in_dims])
        b = kernel.reshape(k, -1)
    batch_shape = x.shape[: x.ndim - spec.in_dims]
    low = spec.matmul_dtype
    return x.reshape(-1, k).astype(low), b.astype(low), (*batch_shape, *out_shape)


def _dot(a: jax.Array, b: jax.Array, a_axis: int, b_axis: int) -> jax.Array:
    """[M, K] x [K, N]-style product contracting a's `a_axis` with b's `b_axis`; float32 out."""
    dims = (((a_axis,), (b_axis,)), ((), ()))
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _matmul(spec: _MatmulSpec, x: jax.Array, kernel: jax.Array) -> jax.Array:
    a, b, out_shape = _as_matrices(spec, x, weight(kernel, spec.kernel_dtype))
    return _dot(a, b, 1, 1 if spec.transpose_kernel else 0).reshape(out_shape)


def _matmul_fwd(spec, x, kernel):
    # Residuals: the weight exactly as given (a scan then forwards its slice instead of
    # stacking a copy) and the activation in the matmul dtype, as `bits`.
    return _matmul(spec, x, kernel), (bits(x.astype(spec.matmul_dtype)), kernel)


def _matmul_bwd(spec, residuals, g):
    x_bits, kernel = residuals
    x_low = weight(x_bits, spec.matmul_dtype)
    a, b, _ = _as_matrices(spec, x_low, weight(kernel, spec.kernel_dtype))
    g = g.reshape(a.shape[0], -1).astype(spec.matmul_dtype)
    if spec.transpose_kernel:  # y = a @ b.T, b: [N, K]
        da, db = _dot(g, b, 1, 0), _dot(g, a, 0, 0)
    else:  # y = a @ b, b: [K, N]
        da, db = _dot(g, b, 1, 1), _dot(a, g, 0, 0)
    dx = da.reshape(x_low.shape).astype(spec.x_dtype)
    if kernel.dtype == jnp.uint16:  # bits have no gradient
        return dx, np.zeros(kernel.shape, jax.dtypes.float0)
    return dx, db.reshape(kernel.shape).astype(kernel.dtype)


_matmul.defvjp(_matmul_fwd, _matmul_bwd)


def matmul(
    x: jax.Array,
    kernel: jax.Array,
    in_dims: int,
    matmul_dtype: Dtype,
    out_dtype: Dtype,
    transpose_kernel: bool = False,
    kernel_dtype: Dtype = jnp.float32,
) -> jax.Array:
    """Contracts the last `in_dims` axes of x with the first `in_dims` of kernel (or, with
    `transpose_kernel`, with the last `in_dims` of a [*out_shape, *in_shape] kernel).

    x: [..., *in_shape]; kernel: [*in_shape, *out_shape] or transposed (floats, or uint16 bits
    of `kernel_dtype`) -> [..., *out_shape] in `out_dtype`. Inputs are cast to `matmul_dtype`,
    accumulation is float32, and below float32 the backward pass multiplies in `matmul_dtype`
    too (cotangents cast down): a float32 cotangent would make XLA:CPU upcast the weights
    and leave its AMX / AVX512-BF16 kernels.
    """
    matmul_dtype = jnp.dtype(matmul_dtype)
    if matmul_dtype != jnp.float32 or kernel.dtype == jnp.uint16:
        spec = _MatmulSpec(
            in_dims,
            transpose_kernel,
            matmul_dtype.name,
            jnp.dtype(kernel_dtype).name,
            jnp.dtype(x.dtype).name,
        )
        y = checkpoint_name(_matmul(spec, x, kernel), WEIGHT_MATMUL)
        return y.astype(out_dtype)
    if transpose_kernel:
        split = kernel.ndim - in_dims
        contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(split, kernel.ndim)))
    else:
        contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    y = jax.lax.dot_general(x.astype(jnp.float32), kernel.astype(jnp.float32), (contract, ((), ())))
    return y.astype(out_dtype)


class _EinsumSpec(NamedTuple):
    """The static half of a low-precision einsum of two operands."""

    subscripts: str  # "a,b->out"
    matmul_dtype: str
    a_dtype: str
    b_dtype: str


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum(spec: _EinsumSpec, a: jax.Array, b: jax.Array) -> jax.Array:
    low = spec.matmul_dtype
    return jnp.einsum(
        spec.subscripts, a.astype(low), b.astype(low), preferred_element_type=jnp.float32
    )


def _einsum_fwd(spec, a, b):
    low = spec.matmul_dtype
    return _einsum(spec, a, b), (bits(a.astype(low)), bits(b.astype(low)))


def _einsum_bwd(spec, residuals, g):
    a, b = (weight(r, spec.matmul_dtype) for r in residuals)
    inputs, out = spec.subscripts.split("->")
    sa, sb = inputs.split(",")
    g = g.astype(spec.matmul_dtype)
    da = jnp.einsum(f"{out},{sb}->{sa}", g, b, preferred_element_type=jnp.float32)
    db = jnp.einsum(f"{out},{sa}->{sb}", g, a, preferred_element_type=jnp.float32)
    return da.astype(spec.a_dtype), db.astype(spec.b_dtype)


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


def einsum(subscripts: str, a: jax.Array, b: jax.Array, matmul_dtype: Dtype) -> jax.Array:
    """`jnp.einsum(subscripts, a, b)` -> float32, multiplying in `matmul_dtype`.

    Below float32 both the product and its backward take `matmul_dtype` inputs with float32
    accumulation, like `matmul` (for activation-by-activation products such as attention's).
    Every index of one operand must appear in the other or in the output.
    """
    matmul_dtype = jnp.dtype(matmul_dtype)
    if matmul_dtype == jnp.float32:
        return jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32)
    inputs, out = subscripts.replace(" ", "").split("->")
    sa, sb = inputs.split(",")
    if not (set(sa) <= set(sb) | set(out) and set(sb) <= set(sa) | set(out)):
        raise ValueError(f"einsum {subscripts!r}: an index is summed within one operand")
    spec = _EinsumSpec(
        f"{sa},{sb}->{out}", matmul_dtype.name, jnp.dtype(a.dtype).name, jnp.dtype(b.dtype).name
    )
    return checkpoint_name(_einsum(spec, a, b), ACTIVATION_MATMUL)
