"""Model shapes for every architecture, dtypes, and parameter counts of the standard nets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nme_train.models import MODELS, build_model, get_activation
from nme_train.models.activations import beta_gelu, gelu, relu


def model_config(**kw):
    """config.model of base_config() (every registered model's settings) with `kw`."""
    from nme_train.base_config import base_config

    c = base_config().model
    c.update(kw)
    return c


def example_config(name, **kw):
    """Model `name` at its registered tiny example setting."""
    return model_config(name=name, **{**MODELS[name].example, **kw})


def shapes(config, image_shape, num_classes=10, batch=2):
    """(logits shape, parameter count, collections) via eval_shape: nothing is computed."""
    model = build_model(config, num_classes)
    shape = (batch, *image_shape)
    variables = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(shape), train=False))
    out = jax.eval_shape(lambda v: model.apply(v, jnp.zeros(shape), train=False), variables)
    count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))
    return out, count, set(variables)


@pytest.mark.parametrize("config,image_shape", [
    (model_config(name="mlp", hidden=(64, 64), batch_norm=False), (8, 8, 1)),
    (model_config(name="mlp", hidden=(64,)), (28, 28, 1)),
    (model_config(name="cnn"), (8, 8, 1)),
    (model_config(name="cnn", pool="max", batch_norm=False), (28, 28, 1)),
    (model_config(name="resnet", depth=18, stem="cifar"), (32, 32, 3)),
    (model_config(name="resnet", depth=34, stem="imagenet"), (64, 64, 3)),
    (model_config(name="resnet", depth=50, stem="imagenet"), (64, 64, 3)),
    (model_config(name="wide_resnet", depth=16, widen_factor=2), (32, 32, 3)),
])
def test_every_architecture_gives_logits(config, image_shape):
    out, count, collections = shapes(config, image_shape)
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    assert count > 0
    assert ("batch_stats" in collections) == config.batch_norm


@pytest.mark.parametrize("config,image_shape,num_classes,expected", [
    # reference counts: torchvision resnet50 25,557,032; WRN-28-10 36.5 M (Zagoruyko & Komodakis)
    (model_config(name="resnet", depth=50, width=64, stem="imagenet"), (224, 224, 3), 1000,
     25_557_032),
    (model_config(name="resnet", depth=18, width=64, stem="imagenet"), (224, 224, 3), 1000,
     11_689_512),
    # ResNet-10, one basic block per stage, counted by hand: stem 9,408 + 128, stages
    # 73,984 + 230,144 + 919,040 + 3,673,088, classifier 513,000 (the same count gives 18's)
    (model_config(name="resnet", depth=10, width=64, stem="imagenet"), (224, 224, 3), 1000,
     5_418_792),
    (model_config(name="wide_resnet", depth=28, widen_factor=10), (32, 32, 3), 10, 36_479_194),
])
def test_standard_networks_have_the_published_parameter_counts(config, image_shape, num_classes,
                                                                expected):
    out, count, _ = shapes(config, image_shape, num_classes)
    assert out.shape == (2, num_classes)
    assert count == expected


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params():
    config = model_config(name="resnet", depth=18, dtype="bfloat16")
    model = build_model(config, 10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 16, 16, 3)), train=False)
    assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype("float32")}
    hidden = model.apply(variables, jnp.ones((2, 16, 16, 3)), train=False,
                         capture_intermediates=True, mutable=["intermediates"])[1]
    dtypes = {x.dtype for x in jax.tree.leaves(hidden["intermediates"])}
    assert jnp.dtype("bfloat16") in dtypes


def test_activation_values():
    x = jnp.array([-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(relu(x), [0, 0, 0, 0.5, 2.0])
    np.testing.assert_allclose(gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6)
    # beta -> large approaches ReLU; beta_gelu(1) is GELU
    np.testing.assert_allclose(beta_gelu(x, 1.0), gelu(x), rtol=1e-6)
    np.testing.assert_allclose(beta_gelu(x, 1e4), relu(x), atol=1e-6)
    assert get_activation("beta_gelu", beta=3.0)(jnp.array(0.5)) == beta_gelu(jnp.array(0.5), 3.0)
    with pytest.raises(ValueError, match="config.model.activation=.swishh. is not known"):
        get_activation("swishh")


def test_every_model_accepts_every_activation():
    """Every registered model at its example setting, with every registered activation."""
    from nme_train.models import activation_names

    for activation in activation_names():
        for name in MODELS:
            out, _, _ = shapes(example_config(name, activation=activation, beta=4.0),
                               (16, 16, 3))
            assert out.shape == (2, 10), (name, activation)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_twins_take_the_same_variables_and_give_the_same_outputs_and_gradient(name):
    """The NME split's twins (sigma'' ablated; also BatchNorm's statistics) of every
    registered model: the same variable tree, outputs, new batch statistics and gradient."""
    from nme_train.models import build_ablated_model

    config = example_config(name, activation="gelu")
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3))
    labels = jnp.arange(4) % 3
    model = build_model(config, 3)

    def init(module):  # (compiled: op by op, a ResNet's init and gradient take seconds)
        return jax.jit(lambda k: module.init(k, x, train=False))(jax.random.PRNGKey(0))

    variables = init(model)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def loss_and_state(module):
        def loss(p):
            logits, new = module.apply({"params": p, **state}, x, train=True,
                                       mutable=list(state))
            return optax_ce(logits, labels), new
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (value, new_state), grads = loss_and_state(model)
    for ablate in (("activation",), ("activation", "normalization")):
        twin = build_ablated_model(config, 3, ablate)
        twin_vars = init(twin)
        assert jax.tree.structure(twin_vars) == jax.tree.structure(variables), ablate
        (twin_value, twin_state), twin_grads = loss_and_state(twin)
        np.testing.assert_allclose(twin_value, value, rtol=1e-6)
        for a, b in zip(jax.tree.leaves(twin_state), jax.tree.leaves(new_state)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        for a, b in zip(jax.tree.leaves(twin_grads), jax.tree.leaves(grads)):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def optax_ce(logits, labels):
    import optax

    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def test_batch_norm_without_statistics_curvature_is_flax_batch_norm_to_first_order():
    """layers.BatchNorm against flax's in training mode (float64): the same value, running
    statistics and Jacobian in the input, scale and offset; its input Hessian is zero,
    flax's is not; in evaluation mode both are the same affine map."""
    import flax.linen as nn

    from nme_train.models.layers import BatchNorm

    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.PRNGKey(0), (5, 3), jnp.float64) * 2 + 1
        w = jax.random.normal(jax.random.PRNGKey(1), (5, 3), jnp.float64)
        mine, flax_bn = (cls(use_running_average=False, momentum=0.9, epsilon=1e-5,
                             dtype=jnp.float64, param_dtype=jnp.float64)
                         for cls in (BatchNorm, nn.BatchNorm))
        variables = flax_bn.init(jax.random.PRNGKey(2), x)
        params = {"scale": variables["params"]["scale"] + 0.3,
                  "bias": variables["params"]["bias"] - 0.2}

        def f(module):
            def out(p, inputs):
                y, state = module.apply({"params": p, "batch_stats": variables["batch_stats"]},
                                        inputs, mutable=["batch_stats"])
                return jnp.sum(w * y), (y, state)
            return out

        (_, (ym, sm)), (_, (yf, sf)) = f(mine)(params, x), f(flax_bn)(params, x)
        np.testing.assert_allclose(ym, yf, rtol=1e-14)
        np.testing.assert_allclose(jax.tree.leaves(sm), jax.tree.leaves(sf), rtol=1e-14)
        for argnum in (0, 1):
            gm = jax.grad(lambda p, i: f(mine)(p, i)[0], argnums=argnum)(params, x)
            gf = jax.grad(lambda p, i: f(flax_bn)(p, i)[0], argnums=argnum)(params, x)
            for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(gf)):
                np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        hm = jax.hessian(lambda i: f(mine)(params, i)[0])(x)
        hf = jax.hessian(lambda i: f(flax_bn)(params, i)[0])(x)
        assert np.abs(hm).max() < 1e-12 and np.abs(hf).max() > 1e-2
        evaluated = [cls(use_running_average=True, epsilon=1e-5, dtype=jnp.float64,
                         param_dtype=jnp.float64).apply(variables, x)
                     for cls in (BatchNorm, nn.BatchNorm)]
        np.testing.assert_allclose(evaluated[0], evaluated[1], rtol=1e-14)


def test_every_model_setting_is_declared_once_and_documented():
    """config.model is COMMON plus each registered model's settings; docs/configuring.md's
    table names every field, and a field two models share means the same in both."""
    import os

    from conftest import ROOT

    from nme_train.base_config import base_config
    from nme_train.models import model_fields
    from nme_train.models.registry import COMMON

    fields = model_fields()
    assert set(base_config().model) == set(fields)
    assert set(COMMON) <= set(fields)
    docs = open(os.path.join(ROOT, "docs", "configuring.md"), encoding="utf-8").read()
    for field in fields:
        assert f"`{field}`" in docs, field
    for name, entry in MODELS.items():
        assert f"`{name}`" in docs, name
        for key, setting in entry.settings.items():
            first = fields[key]
            # one field, one meaning: a shared name is documented by both models alike
            assert setting.doc == first.doc, (name, key)
