"""Model shapes for every architecture, dtypes, and parameter counts of the standard nets."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from nme_train.models import build_model, get_activation
from nme_train.models.activations import beta_gelu, gelu, relu


def model_config(**kw):
    c = ml_collections.ConfigDict(dict(
        name="cnn", activation="relu", beta=1.0, batch_norm=True, features=(8, 16),
        hidden=(32,), pool="avg", depth=18, width=8, stem="cifar", dtype="float32",
        param_dtype="float32"))
    c.update(kw)
    return c


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
    (model_config(name="wide_resnet", depth=16, width=2), (32, 32, 3)),
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
    (model_config(name="wide_resnet", depth=28, width=10), (32, 32, 3), 10, 36_479_194),
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
    with pytest.raises(ValueError, match="unknown activation"):
        get_activation("swishh")


@pytest.mark.parametrize("activation", ["relu", "gelu", "beta_gelu", "gelu_nme_ablated",
                                        "relu_synthetic_nme"])
def test_every_model_accepts_every_activation(activation):
    for name in ("mlp", "cnn", "resnet", "wide_resnet"):
        config = model_config(name=name, activation=activation, beta=4.0, depth=10 if
                              name == "wide_resnet" else 18, width=1 if name == "wide_resnet"
                              else 4)
        out, _, _ = shapes(config, (16, 16, 3))
        assert out.shape == (2, 10)
