"""lowp.matmul: the low-precision path and its backward, and uint16 weight bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import layers, lowp


def _reference(x, kernel, in_dims, dtype):
    contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(
        x.astype(dtype).astype(jnp.float32),
        kernel.astype(dtype).astype(jnp.float32),
        (contract, ((), ())),
        precision="highest",
    )


def _matches_rounded_reference(ours, ref, a, b, rng):
    """ours(a, b) equals ref on bf16-rounded inputs, and so do its two input gradients."""
    np.testing.assert_allclose(ours(a, b), ref(a, b), rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.normal(size=ours(a, b).shape), jnp.float32)
    da, db = jax.vjp(ours, a, b)[1](cot)
    # The backward multiplies in bfloat16 too: compare with the cotangent rounded the same way.
    rda, rdb = jax.vjp(ref, a, b)[1](cot.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(da, rda, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(db, rdb, rtol=2e-2, atol=2e-2)
    assert da.dtype == a.dtype and db.dtype == b.dtype


@pytest.mark.parametrize("in_dims", [1, 2])
def test_bfloat16_matmul_matches_rounded_inputs_and_its_gradients(in_dims):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 6, 7)[2 - in_dims :]), jnp.float32)

    def ours(x, k):
        return lowp.matmul(x, k, in_dims, "bfloat16", jnp.float32)

    def ref(x, k):
        return _reference(x, k, in_dims, jnp.bfloat16)

    _matches_rounded_reference(ours, ref, x, kernel, rng)


def test_transposed_kernel_is_the_tied_head():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    for dtype in ("float32", "bfloat16"):
        out = lowp.matmul(x, table, 1, dtype, jnp.float32, transpose_kernel=True)
        np.testing.assert_allclose(out, _reference(x, table.T, 1, dtype), rtol=1e-5, atol=1e-5)
    grad = jax.grad(
        lambda x: lowp.matmul(x, table, 1, "bfloat16", jnp.float32, transpose_kernel=True).sum()
    )(x)
    expected = table.astype(jnp.bfloat16).astype(jnp.float32).sum(0)
    np.testing.assert_allclose(grad, jnp.broadcast_to(expected, x.shape), rtol=1e-2)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("in_dims", [1, 2])
def test_out_first_kernel_computes_the_in_first_product(in_dims, dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 6, 3, 7)[2 - in_dims :]), jnp.float32)
    out_first = jnp.moveaxis(kernel, range(in_dims), range(-in_dims, 0))  # [*out, *in]
    out = lowp.matmul(x, out_first, in_dims, dtype, jnp.float32, transpose_kernel=True)
    expected = _reference(x, kernel, in_dims, dtype)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_uint16_bits_of_a_bfloat16_kernel_give_the_same_values_and_input_gradient(matmul_dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(6, 5)), jnp.bfloat16)
    bits = jax.lax.bitcast_convert_type(kernel, jnp.uint16)

    def run(k):
        return lowp.matmul(x, k, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16")

    np.testing.assert_array_equal(run(bits), run(kernel))
    gx_bits = jax.grad(
        lambda x: lowp.matmul(x, bits, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16").sum()
    )(x)
    gx = jax.grad(
        lambda x: lowp.matmul(
            x, kernel, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16"
        ).sum()
    )(x)
    np.testing.assert_array_equal(gx_bits, gx)


def test_bfloat16_matmul_backward_runs_its_products_in_bfloat16():
    # A float32 cotangent would make XLA upcast the weight; every dot here takes bf16 inputs.
    x = jnp.ones((16, 32), jnp.float32)
    kernel = jnp.ones((32, 8), jnp.bfloat16)

    def loss(x):
        return lowp.matmul(x, kernel, 1, "bfloat16", jnp.float32, kernel_dtype="bfloat16").sum()

    hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line and "=" in line]
    assert dots and all("bf16" in line.split("dot_general")[1] for line in dots), dots


@pytest.mark.parametrize("subscripts", ["btkgd,bskd->bkgts", "bkgts,bskd->btkgd", "ij,jk->ik"])
def test_bfloat16_einsum_matches_rounded_inputs_and_its_gradients(subscripts):
    rng = np.random.default_rng(3)
    sizes = dict(b=2, t=5, s=7, k=2, g=3, d=4, i=3, j=6)
    (sa, sb), _ = subscripts.split("->")[0].split(","), None
    a = jnp.asarray(rng.normal(size=[sizes[c] for c in sa]), jnp.float32)
    b = jnp.asarray(rng.normal(size=[sizes[c] for c in sb]), jnp.float32)

    def ours(a, b):
        return lowp.einsum(subscripts, a, b, "bfloat16")

    def ref(a, b):
        rounded = [x.astype(jnp.bfloat16).astype(jnp.float32) for x in (a, b)]
        return jnp.einsum(subscripts, *rounded, precision="highest")

    _matches_rounded_reference(ours, ref, a, b, rng)
    # float32 is the plain einsum, unchanged.
    np.testing.assert_array_equal(
        lowp.einsum(subscripts, a, b, "float32"),
        jnp.einsum(subscripts, a, b, preferred_element_type=jnp.float32),
    )
    with pytest.raises(ValueError, match="summed within one operand"):
        lowp.einsum("ij,jk->k", a[:3, :6] if a.ndim == 2 else a, b, "bfloat16")


def test_bfloat16_attention_backward_runs_its_products_in_bfloat16():
    q = jnp.ones((2, 5, 6, 4), jnp.float32)
    kv = jnp.ones((2, 5, 2, 4), jnp.float32)
    mask = jnp.tril(jnp.ones((5, 5), bool))[None].repeat(2, 0)

    def loss(q, k, v):
        return (layers.dot_product_attention(q, k, v, mask, jnp.float32, "bfloat16") ** 2).sum()

    hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line and "=" in line]
    assert len(dots) == 6 and all("bf16" in line.split("dot_general")[1] for line in dots), dots
