"""Bad configs fail before anything is built, each with a message naming field and fix."""

import pytest
from conftest import with_overrides

from configs import default
from nme_train.validation import ConfigError, validate


def config_with(**overrides):
    return with_overrides(default.get_config(), **overrides)


def test_default_config_is_valid_on_1_and_8_devices():
    validate(default.get_config(), 1)
    validate(default.get_config(), 8)


@pytest.mark.parametrize("overrides,devices,message", [
    ({"model.name": "resnet9000"}, 1, r"config.model.name='resnet9000' is not known; choose "
     r"one of \['cnn', 'mlp', 'resnet', 'wide_resnet'\]"),
    ({"data.name": "mnist_typo"}, 1, r"config.data.name='mnist_typo' is not known"),
    ({"optimizer.name": "lamb"}, 1, r"config.optimizer.name='lamb' is not known"),
    ({"model.activation": "swish"}, 1, r"config.model.activation='swish' is not known"),
    ({"batch_size": 100}, 8, r"config.batch_size=100 is not divisible by the data-parallel "
     r"size 8 .* use a multiple of 8, e.g. 96 or 104"),
    ({"mesh.data": 4, "mesh.fsdp": 1}, 8, r"config.mesh=.* gives data=4 x fsdp=1, which does "
     r"not match the 8 devices"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, 8, r"at most one axis may be -1"),
    ({"mesh.fsdp": 3}, 8, r"does not match the 8 devices"),
    ({"model.name": "resnet", "model.depth": 20}, 1, r"config.model.depth=20 is not a ResNet "
     r"depth; use one of \[10, 18, 34, 50, 101, 152\]"),
    ({"model.name": "wide_resnet", "model.depth": 27}, 1, r"depth = 6n\+4"),
    ({"num_train_steps": 100}, 1, r"set exactly one of them > 0"),
    ({"optimizer.learning_rate": -0.1}, 1, r"config.optimizer.learning_rate=-0.1 must be a "
     r"number > 0"),
    ({"optimizer.momentum": 1.5}, 1, r"config.optimizer.momentum=1.5 must lie in \[0, 1\)"),
    ({"model.activation": "beta_gelu", "model.beta": 0.0}, 1, r"config.model.beta=0.0 must be"),
    ({"data.augment": "mixup"}, 1, r"config.data.augment='mixup' is not known"),
    ({"label_smoothing": 1.0}, 1, r"config.label_smoothing=1.0 must be < 1"),
    ({"eval_batch_size": 0}, 1, r"config.eval_batch_size=0 must be a positive integer"),
    ({"regularizers": [("mixup", {})]}, 1, r"config.regularizers\[0\]: unknown regularizer "
     r"'mixup'; choose one of \['gauss_newton_trace_penalty', 'gradient_penalty', "),
    ({"regularizers": [("sam", {"rho": -0.1})]}, 1, r"config.regularizers\[0\]: sam: "
     r"rho=-0.1 must be >= 0"),
    ({"regularizers": [("sam", {"rho": 0.1, "m": 5})]}, 8, r"config.regularizers\[0\]: sam "
     r"m=5 does not divide the per-device batch of 16 \(config.batch_size=128 over 8 "
     r"devices\); use one of \[1, 2, 4, 8, 16\]"),
    ({"regularizers": [("weight_noise", {"sigma": 0.1}), ("gradient_penalty", {"rh": 1})]}, 1,
     r"config.regularizers\[1\]: gradient_penalty takes no argument\(s\) \['rh'\]"),
    ({"regularizers": [("sam", 0.05)]}, 1, r"must be a \(name, \{kwargs\}\) pair"),
    ({"regularizers": [("gauss_newton_trace_penalty", {"coef": 0.1, "estimator": "x"})]}, 1,
     r"estimator='x' must be one of"),
    ({"data.data_dir": "s3://b/tfds"}, 1, r"config.data.data_dir=s3://b/tfds: s3:// is not "
     r"supported; give a local path or a gs://bucket/path"),
    ({"init_from": "s3://b/run"}, 1, r"config.init_from=s3://b/run: s3:// is not supported; "
     r"give a local path or a gs://bucket/path"),
])
def test_bad_config_gives_a_clear_error(overrides, devices, message):
    with pytest.raises(ConfigError, match=message):
        validate(config_with(**overrides), devices)


def test_all_problems_are_reported_together():
    with pytest.raises(ConfigError) as info:
        validate(config_with(**{"model.name": "x", "optimizer.name": "y", "batch_size": 7}), 8)
    assert len(info.value.problems) == 3


def test_batch_must_divide_over_processes_too():
    with pytest.raises(ConfigError, match="and 3 process"):
        validate(config_with(batch_size=128), 8, process_count=3)


def test_unknown_field_override_is_rejected_by_the_config_itself():
    c = default.get_config()
    with pytest.raises(AttributeError):
        c.lock()
        c.optimizer.learnin_rate = 0.1


@pytest.mark.parametrize("name", ["default", "default:mlp", "default:resnet",
                                  "fashion_mnist_cnn", "cifar10_resnet18", "cifar10_wrn28_10",
                                  "cifar10_wrn28_10:gelu", "imagenet_resnet50"])
def test_every_shipped_config_loads_and_validates(name):
    import importlib

    module, _, variant = name.partition(":")
    config = importlib.import_module(f"configs.{module}").get_config(
        *([variant] if variant else []))
    validate(config, 8)
    validate(config, 1)


@pytest.mark.parametrize("steps,epochs,message", [
    (0, 40, "config.num_train_steps=0 must be an integer > 0, or -1"),
    (-1, 0, "config.num_epochs=0.0 must be a number > 0, or -1"),
    (-1, -1, "set exactly one of them > 0 and the other to -1"),
    (100, 40, "set exactly one of them > 0 and the other to -1"),
    (-5, 40, "config.num_train_steps=-5 must be"),
])
def test_training_length_has_one_meaning_per_value(steps, epochs, message):
    config = with_overrides(default.get_config(), num_train_steps=steps, num_epochs=epochs)
    with pytest.raises(ConfigError, match=message):
        validate(config, 1)


@pytest.mark.parametrize("activation", ["beta_gelu", "relu_synthetic_nme"])
def test_beta_is_checked_for_every_activation_that_takes_it(activation):
    config = with_overrides(default.get_config(), **{"model.activation": activation,
                                                     "model.beta": -1.0})
    with pytest.raises(ConfigError, match="config.model.beta=-1.0 must be a number > 0"):
        validate(config, 1)


def test_regularizer_arguments_must_be_numbers():
    config = with_overrides(default.get_config(), regularizers=(("sam", {"rho": "big"}),))
    with pytest.raises(ConfigError, match=r"regularizers\[0\]: sam rho='big' must be a number"):
        validate(config, 1)


def test_penalty_update_by_source_needs_an_activation_with_a_twin():
    """update G+NME_act / G+NME_rest splits the NME with the activation's ablated twin: one
    line naming the field when the activation has none; every shipped activation has one."""
    from nme_train.models.activations import ACTIVATIONS, register_activation

    for update in ("G+NME_act", "G+NME_rest"):
        validate(config_with(**{"model.activation": "gelu",
                                "regularizers": [("gradient_penalty",
                                                  {"rho": 0.1, "update": update})]}), 1)
    register_activation("softsign_no_twin", lambda: lambda x: x / (1 + abs(x)))
    try:
        with pytest.raises(ConfigError, match=r"config.regularizers\[0\]: gradient_penalty "
                           r"\(rho=0.1, update='G\+NME_act'\) splits the NME .*="
                           r"'softsign_no_twin' has none"):
            validate(config_with(**{"model.activation": "softsign_no_twin",
                                    "regularizers": [("gradient_penalty",
                                                      {"rho": 0.1, "update": "G+NME_act"})]}), 1)
        validate(config_with(**{"model.activation": "softsign_no_twin",
                                "regularizers": [("gradient_penalty",
                                                  {"rho": 0.1, "update": "G"})]}), 1)
    finally:
        ACTIVATIONS.unregister("softsign_no_twin")
    with pytest.raises(ConfigError, match=r"update='NME' must be one of"):
        validate(config_with(regularizers=[("gradient_penalty", {"rho": 0.1, "update": "NME"})]),
                 1)
