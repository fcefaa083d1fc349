"""Gradient accumulation (config.grad_accum_steps): the update of k microbatches against the
update of the whole batch, for plain training and every regularizer (float64, a tiny MLP
without BatchNorm); BatchNorm per microbatch (ghost batch normalization); the trainer's
sharded step on 8 devices; the validator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax.flatten_util import ravel_pytree

from nme_train import regularizers as reg
from nme_train.curvature import softmax_cross_entropy
from nme_train.models.activations import gelu, gelu_nme_ablated
from nme_train.regularizers import REGULARIZERS
from tests.dense_split import split_model

pytestmark = pytest.mark.usefixtures("float64")


def cases():
    """(name, transform) of plain training, every registered regularizer at its example,
    and the variants whose accumulation differs."""
    out = [("plain", reg.chain())]
    out += [(name, REGULARIZERS[name].factory(**entry.example))
            for name, entry in REGULARIZERS.items()
            if name != "gauss_newton_trace_penalty"]
    out += [("gauss_newton_trace_penalty/hutchinson",
             reg.gauss_newton_trace_penalty(1e-2, num_samples=2)),
            ("hessian_trace_penalty/5", reg.hessian_trace_penalty(1e-3, num_probes=5)),
            # m-sharpness: m divides each shard's part of a microbatch (8 / (2 x 4) = 1)
            ("sam/m=1", reg.sam(0.05, m=1)), ("sam/adaptive", reg.sam(0.05, adaptive=True)),
            ("gradient_penalty/power2", reg.gradient_penalty(0.3, power=2)),
            ("gradient_penalty/G", reg.gradient_penalty(0.3, update="G")),
            ("gradient_penalty/G+NME_act", reg.gradient_penalty(0.3, update="G+NME_act")),
            ("gradient_penalty/G+NME_rest", reg.gradient_penalty(0.3, update="G+NME_rest")),
            ("gradient_penalty/double_backprop",
             reg.gradient_penalty(0.3, mode="double_backprop")),
            ("weight_noise+gradient_penalty",
             reg.chain(reg.weight_noise(0.05), reg.gradient_penalty(0.2))),
            ("weight_noise+sam", reg.chain(reg.weight_noise(0.05), reg.sam(0.1)))]
    return out


def problem(batch_norm=False, n=8):
    apply, params, batch = split_model("mlp", batch_norm)
    rng = np.random.default_rng(5)
    batch = {"inputs": jnp.asarray(rng.normal(size=(n, batch["inputs"].shape[1]))),
             "targets": jnp.asarray(rng.integers(0, 3, n))}
    obj = reg.objective(lambda p, x: apply(p, x, gelu)[0], softmax_cross_entropy(),
                        ablated_apply_fn=lambda p, x: apply(p, x, gelu_nme_ablated)[0])
    return obj, params, batch


# k = 4 too for plain training, every registered regularizer and a chain
FOUR = ("plain", *(n for n in REGULARIZERS if n != "gauss_newton_trace_penalty"),
        "gauss_newton_trace_penalty/hutchinson", "weight_noise+gradient_penalty")


@pytest.mark.parametrize("name,transform,k", [(n, t, 2) for n, t in cases()]
                         + [(n, t, 4) for n, t in cases() if n in FOUR],
                         ids=[f"{c[0]}-2" for c in cases()] + [f"{n}-4" for n in FOUR])
def test_k_microbatches_give_the_whole_batch_update(name, transform, k):
    obj, params, batch = problem()
    obj = transform(obj)
    key = jax.random.PRNGKey(3)
    # the whole batch's update (jit: op by op, it takes longer than the compile)
    (value, aux), grads = jax.jit(jax.value_and_grad(obj, has_aux=True))(params, batch, key)
    micro = reg.split_microbatches(batch, k, groups=2)  # as if over 2 devices
    (acc_value, acc_aux), acc_grads = jax.jit(reg.accumulated_value_and_grad,
                                              static_argnums=0)(obj, params, micro, key)
    # Weight noise is drawn in float32 (the same draw with and without x64), and two programs
    # may round a float32 normal one ulp apart (XLA's CPU elemental emitters, which the tests
    # compile with): chains with noise agree to float32's precision, the rest to float64's.
    rtol, atol = (1e-6, 1e-9) if "weight_noise" in name else (1e-9, 1e-12)
    np.testing.assert_allclose(ravel_pytree(acc_grads)[0], ravel_pytree(grads)[0],
                               rtol=rtol, atol=atol, err_msg=name)
    np.testing.assert_allclose(acc_value, value, rtol=rtol, err_msg=name)
    assert acc_aux["outputs"].shape == aux["outputs"].shape
    for metric in aux["metrics"]:  # the diagnostics of the whole batch, or their mean
        assert np.isfinite(acc_aux["metrics"][metric]), metric


def test_microbatches_take_a_slice_of_every_shard():
    batch = {"x": jnp.arange(16)}
    micro = reg.split_microbatches(batch, 2, groups=4)["x"]
    # 4 shards of 4 rows; microbatch 0 takes the first 2 rows of each shard
    assert micro.tolist() == [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]


def test_batch_norm_normalises_each_microbatch_on_its_own():
    """With BatchNorm the accumulated update is the mean of the microbatches' updates, each
    normalised with its own statistics (ghost batch normalization), not the whole batch's;
    the model state takes the mean of the microbatches' updates."""
    obj, params, batch = problem(batch_norm=True)
    key = jax.random.PRNGKey(0)
    micro = reg.split_microbatches(batch, 2)
    (_, _), acc = reg.accumulated_value_and_grad(obj, params, micro, key)
    grad = jax.grad(lambda p, b: obj(p, b, key)[0])
    ghost = [ravel_pytree(grad(params, jax.tree.map(lambda x, j=j: x[4 * j:4 * j + 4],
                                                     batch)))[0] for j in range(2)]
    np.testing.assert_allclose(ravel_pytree(acc)[0], np.mean(ghost, axis=0), rtol=1e-9,
                               atol=1e-12)
    whole = ravel_pytree(grad(params, batch))[0]
    assert np.linalg.norm(ravel_pytree(acc)[0] - whole) > 1e-3 * np.linalg.norm(whole)


def test_sampled_label_estimate_is_of_the_microbatches():
    """The paper's sampled-label Gauss-Newton estimator squares a microbatch's mean
    gradient: accumulated, it estimates Tr G from each microbatch (unbiased, not the
    whole batch's number); documented, and refused as exact nowhere."""
    obj, params, batch = problem()
    obj = reg.gauss_newton_trace_penalty(1.0, estimator="sampled_labels")(obj)
    key = jax.random.PRNGKey(0)
    whole = obj(params, batch, key)[1]["metrics"]["gauss_newton_trace_penalty/trace"]
    (_, aux), _ = reg.accumulated_value_and_grad(obj, params,
                                                 reg.split_microbatches(batch, 2), key)
    micro = aux["metrics"]["gauss_newton_trace_penalty/trace"]
    assert np.isfinite(micro) and not np.isclose(micro, whole)


@pytest.mark.slow
def test_the_trainers_sharded_step_with_accumulation(data_dir, tmp_path):
    """On 8 devices without BatchNorm, 4 microbatches train the same parameters as one batch
    (float32 round-off), with SAM and the gradient penalty, the loop unrolled (the trainer
    on CPUs) or rolled (on accelerators); validation asks for a k that
    divides each device's batch."""
    from nme_train.data import DATASETS
    from nme_train.train.program import build_program
    from nme_train.validation import ConfigError, validate

    jax.config.update("jax_enable_x64", False)
    try:
        results = {}
        for k, rolled in ((1, None), (4, None), (4, True)):  # on CPUs the trainer unrolls
            config = tiny_config(data_dir, grad_accum_steps=k, **{
                "model.batch_norm": False, "batch_size": 64,
                "regularizers": (("gradient_penalty", {"rho": 0.1}), ("sam", {"rho": 0.05}))})
            validate(config, 8)
            spec = DATASETS[config.data.name]
            program = build_program(config, spec, jax.devices(), 10, 10,
                                    rolled_microbatch_loop=rolled)
            state = program.init()
            rng = np.random.default_rng(0)
            batch = {"image": rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8),
                     "label": rng.integers(0, 10, 64).astype(np.int32)}
            from nme_train.sharding import global_batch

            device_batch = global_batch(batch, program.batch_sharding)
            for _ in range(2):
                state, metrics = program.train_step(state, device_batch)
            results[k, rolled] = (ravel_pytree(jax.device_get(state.params))[0],
                                  jax.device_get(metrics))
        for loop in (None, True):
            params, metrics = results[4, loop]
            np.testing.assert_allclose(params, results[1, None][0], rtol=2e-4, atol=2e-6)
            np.testing.assert_allclose(metrics["accuracy"], results[1, None][1]["accuracy"])
        with pytest.raises(ConfigError, match=r"config.grad_accum_steps=3 does not divide the "
                           r"per-device batch of 8 \(config.batch_size=64 over 8 devices\)"):
            validate(tiny_config(data_dir, grad_accum_steps=3, batch_size=64), 8)
        with pytest.raises(ConfigError, match=r"sam m=4 does not divide the per-device batch "
                           r"of each of the 4 microbatches of 2"):
            validate(tiny_config(data_dir, grad_accum_steps=4, batch_size=64,
                                 regularizers=(("sam", {"rho": 0.1, "m": 4}),)), 8)
    finally:
        jax.config.update("jax_enable_x64", True)
