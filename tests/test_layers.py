"""layers.matmul: the low-precision path and its backward, and uint16 weight bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ptlearn import layers


def _reference(x, kernel, in_dims, dtype):
    contract = (tuple(range(x.ndim - in_dims, x.ndim)), tuple(range(in_dims)))
    return jax.lax.dot_general(
        x.astype(dtype).astype(jnp.float32),
        kernel.astype(dtype).astype(jnp.float32),
        (contract, ((), ())),
        precision="highest",
    )


@pytest.mark.parametrize("in_dims", [1, 2])
def test_bfloat16_matmul_matches_rounded_inputs_and_its_gradients(in_dims):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 6, 7)[2 - in_dims :]), jnp.float32)

    def ours(x, k):
        return layers.matmul(x, k, in_dims, "bfloat16", jnp.float32)

    def ref(x, k):
        return _reference(x, k, in_dims, jnp.bfloat16)

    np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
    cot = jnp.asarray(rng.normal(size=ours(x, kernel).shape), jnp.float32)
    dx, dk = jax.vjp(ours, x, kernel)[1](cot)
    # The backward multiplies in bfloat16 too: compare with the cotangent rounded the same way.
    rdx, rdk = jax.vjp(ref, x, kernel)[1](cot.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(dx, rdx, rtol=2e-2, atol=2e-2)
    np.testing.assert_allclose(dk, rdk, rtol=2e-2, atol=2e-2)
    assert dx.dtype == x.dtype and dk.dtype == kernel.dtype


def test_transposed_kernel_is_the_tied_head():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(3, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(11, 8)), jnp.float32)
    for dtype in ("float32", "bfloat16"):
        out = layers.matmul(x, table, 1, dtype, jnp.float32, transpose_kernel=True)
        np.testing.assert_allclose(out, _reference(x, table.T, 1, dtype), rtol=1e-5, atol=1e-5)
    grad = jax.grad(
        lambda x: layers.matmul(x, table, 1, "bfloat16", jnp.float32, transpose_kernel=True).sum()
    )(x)
    expected = table.astype(jnp.bfloat16).astype(jnp.float32).sum(0)
    np.testing.assert_allclose(grad, jnp.broadcast_to(expected, x.shape), rtol=1e-2)


@pytest.mark.parametrize("matmul_dtype", ["float32", "bfloat16"])
def test_uint16_bits_of_a_bfloat16_kernel_give_the_same_values_and_input_gradient(matmul_dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(6, 5)), jnp.bfloat16)
    bits = jax.lax.bitcast_convert_type(kernel, jnp.uint16)

    def run(k):
        return layers.matmul(x, k, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16")

    np.testing.assert_array_equal(run(bits), run(kernel))
    gx_bits = jax.grad(
        lambda x: layers.matmul(
            x, bits, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16"
        ).sum()
    )(x)
    gx = jax.grad(
        lambda x: layers.matmul(
            x, kernel, 1, matmul_dtype, jnp.float32, kernel_dtype="bfloat16"
        ).sum()
    )(x)
    np.testing.assert_array_equal(gx_bits, gx)


def test_bfloat16_matmul_backward_runs_its_products_in_bfloat16():
    # A float32 cotangent would make XLA upcast the weight; every dot here takes bf16 inputs.
    x = jnp.ones((16, 32), jnp.float32)
    kernel = jnp.ones((32, 8), jnp.bfloat16)

    def loss(x):
        return layers.matmul(x, kernel, 1, "bfloat16", jnp.float32, kernel_dtype="bfloat16").sum()

    hlo = jax.jit(jax.grad(loss)).lower(x).as_text()
    dots = [line for line in hlo.splitlines() if "dot_general" in line and "=" in line]
    assert dots and all("bf16" in line.split("dot_general")[1] for line in dots), dots
