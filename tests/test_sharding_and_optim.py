"""Sharding rules, global batches, and the learning-rate schedule against hand values."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from nme_train import sharding as shd
from nme_train.optim import learning_rate_schedule, make_optimizer


def test_param_spec_rule():
    assert shd.param_spec((3, 3, 64, 128), fsdp_size=2, min_size=1000) == P(None, None, None,
                                                                            "fsdp")
    assert shd.param_spec((128,), fsdp_size=2, min_size=1000) == P()  # small: replicated
    assert shd.param_spec((3, 3, 64, 128), fsdp_size=1, min_size=1) == P()  # no fsdp axis
    assert shd.param_spec((7, 9), fsdp_size=2, min_size=1) == P()  # nothing divisible
    assert shd.param_spec((1000, 10), fsdp_size=4, min_size=1) == P("fsdp", None)


def test_mesh_and_state_shardings_on_8_devices():
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 2}))
    assert dict(mesh.shape) == {"data": 4, "fsdp": 2}
    tree = {"kernel": jax.ShapeDtypeStruct((3, 3, 16, 32), jnp.float32),
            "bias": jax.ShapeDtypeStruct((32,), jnp.float32)}
    shardings = shd.tree_shardings(tree, mesh, min_size=256)
    assert shardings["kernel"].spec == P(None, None, None, "fsdp")
    assert shardings["bias"].spec == P()
    x = jax.device_put(jnp.ones((3, 3, 16, 32)), shardings["kernel"])
    assert x.addressable_shards[0].data.shape == (3, 3, 16, 16)


def test_global_batch_is_split_over_all_devices():
    mesh = shd.make_mesh(ml_collections.ConfigDict({"data": 4, "fsdp": 2}))
    local = {"image": np.arange(16 * 2).reshape(16, 2), "label": np.arange(16)}
    batch = shd.global_batch(local, shd.batch_sharding(mesh))
    assert batch["image"].shape == (16, 2)
    assert {s.data.shape for s in batch["image"].addressable_shards} == {(2, 2)}
    np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])


def optimizer_config(**kw):
    c = ml_collections.ConfigDict(dict(name="nesterov", learning_rate=0.4, momentum=0.9,
                                       weight_decay=0.0, weight_decay_on="kernels",
                                       schedule="cosine", warmup_epochs=1.0,
                                       grad_clip_norm=0.0))
    c.update(kw)
    return c


def test_warmup_then_cosine_schedule():
    schedule = learning_rate_schedule(optimizer_config(), total_steps=110, steps_per_epoch=10)
    assert schedule(0) == 0.0
    assert schedule(5) == pytest.approx(0.2)  # half-way through the 10 warmup steps
    assert schedule(10) == pytest.approx(0.4)
    # cosine over the remaining 100 steps: 0.4 * 0.5 * (1 + cos(pi * 50 / 100)) = 0.2
    assert schedule(60) == pytest.approx(0.2, rel=1e-5)
    assert schedule(110) == pytest.approx(0.0, abs=1e-7)


def test_weight_decay_is_l2_on_kernels_only():
    tx = make_optimizer(optimizer_config(name="sgd", weight_decay=0.1, schedule="constant",
                                         warmup_epochs=0.0), optax.constant_schedule(1.0))
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["kernel"], -0.1 * np.ones((2, 2)))
    np.testing.assert_allclose(updates["bias"], np.zeros(2))


def test_weight_decay_on_all_parameters():
    tx = make_optimizer(optimizer_config(name="sgd", weight_decay=0.1, weight_decay_on="all"),
                        optax.constant_schedule(1.0))
    params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["bias"], -0.1 * np.ones(2))


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov"])
def test_stability_threshold_separates_converging_from_diverging_steps(name):
    """The threshold against the optimizer itself: optax's update on the quadratic
    lambda x^2 / 2 shrinks x for lambda 2% below it and grows x for lambda 2% above."""
    from nme_train.optim import stability_threshold

    o = optimizer_config(name=name, momentum=0.9, weight_decay=0.0, schedule="constant")
    lr = 0.05
    threshold = stability_threshold(o, lr)
    tx = make_optimizer(o, optax.constant_schedule(lr))

    def final_size(curvature):
        x = jnp.ones(())
        state = tx.init(x)
        for _ in range(600):
            updates, state = tx.update(curvature * x, state, x)
            x = optax.apply_updates(x, updates)
        return abs(float(x))

    above = final_size(1.02 * threshold)
    assert final_size(0.98 * threshold) < 1e-1 and not above < 10.0  # inf or nan: diverged
    assert stability_threshold(optimizer_config(name="adam"), lr) is None
