"""Checks a config before anything is built or compiled.

Every problem is reported at once, one line each, naming the field, what is
wrong, and how to fix it, so a pod job fails in seconds rather than after
minutes of compilation.
"""

from __future__ import annotations

import inspect
from typing import Any

from nme_train.curvature.operators import OPERATORS
from nme_train.curvature.probes import BASIS_MEMORY, PRECISIONS
from nme_train.data.augment import AUGMENTATIONS
from nme_train.data.datasets import DATASETS
from nme_train.data.decode import DECODERS, have_simplejpeg
from nme_train.extensions import import_modules
from nme_train.models import DTYPES, MODELS, build_model, setting_problems
from nme_train.models.activations import ACTIVATIONS, ablated_twin, activation_params
from nme_train.models.layers import BATCH_NORM_MODES
from nme_train.optim import OPTIMIZERS, SCHEDULES, WEIGHT_DECAY_ON
from nme_train.regularizers import REGULARIZERS
from nme_train.sharding import AXES, mesh_shape
from nme_train.storage import StorageError, check_scheme


class ConfigError(ValueError):
    """A config that cannot run; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "invalid config:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _choice(problems: list[str], field: str, value: Any, allowed: Any) -> None:
    if value not in allowed:
        problems.append(f"{field}={value!r} is not known; choose one of {sorted(allowed)}")


def _positive(problems: list[str], field: str, value: Any, allow_zero: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        problems.append(f"{field}={value!r} must be a number {bound}")


def _registered(problems: list[str], registry: Any, value: Any) -> None:
    """The registry's one-line problem when `value` names none of its entries."""
    problem = registry.problem(value)
    if problem:
        problems.append(problem)


def _check_model(problems: list[str], m: Any) -> None:
    _registered(problems, MODELS, m.name)
    _registered(problems, ACTIVATIONS, m.activation)
    _choice(problems, "config.model.dtype", m.dtype, DTYPES)
    _choice(problems, "config.model.param_dtype", m.param_dtype, DTYPES)
    if m.activation in ACTIVATIONS and "beta" in activation_params(m.activation):
        _positive(problems, "config.model.beta", m.get("beta"))
    if m.name in MODELS:
        missing = [k for k in MODELS[m.name].settings if k not in m]
        if missing:
            problems.append(f"config.model lacks {missing}, the settings of model {m.name!r}; "
                            f"set them, or select it with models.use_model(config, {m.name!r})")
            return
        wrong = setting_problems(m)
        problems.extend(wrong)
        if not wrong:
            problems.extend(MODELS[m.name].check(m))


def _check_accumulation(problems: list[str], config: Any, num_devices: int) -> None:
    """k microbatches per step: each device's part of the batch splits into k."""
    k, batch = config.get("grad_accum_steps", 1), config.batch_size
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        problems.append(f"config.grad_accum_steps={k!r} must be an integer >= 1")
        return
    if k > 1 and isinstance(batch, int) and batch % num_devices == 0 \
            and (batch // num_devices) % k:
        per_device = batch // num_devices
        divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
        problems.append(f"config.grad_accum_steps={k} does not divide the per-device batch of "
                        f"{per_device} (config.batch_size={batch} over {num_devices} devices); "
                        f"use one of {divisors}")


def _check_profile(problems: list[str], p: Any) -> None:
    start, steps = p.start_step, p.num_steps
    if not isinstance(start, int) or isinstance(start, bool) or start < -1:
        problems.append(f"config.profile.start_step={start!r} must be a step >= 0, or -1 for "
                        "no trace from the config")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        problems.append(f"config.profile.num_steps={steps!r} must be an integer >= 1")
    _positive(problems, "config.profile.poll_seconds", p.poll_seconds)


def _check_length(problems: list[str], config: Any) -> None:
    """num_train_steps > 0 (steps) or -1 (use num_epochs); num_epochs > 0 or -1; one of each."""
    steps, epochs = config.num_train_steps, config.num_epochs
    bad = False
    if not isinstance(steps, int) or isinstance(steps, bool) or (steps <= 0 and steps != -1):
        problems.append(f"config.num_train_steps={steps!r} must be an integer > 0, or -1 to "
                        "train for config.num_epochs")
        bad = True
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or (
            epochs <= 0 and epochs != -1):
        problems.append(f"config.num_epochs={epochs!r} must be a number > 0, or -1 to train "
                        "for config.num_train_steps")
        bad = True
    if not bad and (steps > 0) == (epochs > 0):
        problems.append(f"config.num_epochs={epochs} and config.num_train_steps={steps}: set "
                        "exactly one of them > 0 and the other to -1")


def _check_optimizer(problems: list[str], o: Any) -> None:
    _registered(problems, OPTIMIZERS, o.name)
    _choice(problems, "config.optimizer.schedule", o.schedule, SCHEDULES)
    _choice(problems, "config.optimizer.weight_decay_on", o.weight_decay_on, WEIGHT_DECAY_ON)
    _positive(problems, "config.optimizer.learning_rate", o.learning_rate)
    _positive(problems, "config.optimizer.weight_decay", o.weight_decay, allow_zero=True)
    _positive(problems, "config.optimizer.warmup_epochs", o.warmup_epochs, allow_zero=True)
    _positive(problems, "config.optimizer.grad_clip_norm", o.grad_clip_norm, allow_zero=True)
    if not 0 <= o.momentum < 1:
        problems.append(f"config.optimizer.momentum={o.momentum!r} must lie in [0, 1)")


def _fits(value: Any, annotation: Any) -> bool:
    """False when a regularizer argument annotated as a number is given something else."""
    text = str(annotation)
    numeric = any(t in ("int", "float") for t in text.replace(" ", "").split("|"))
    if not numeric or (value is None and "None" in text):
        return True
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_regularizers(problems: list[str], config: Any, num_devices: int) -> None:
    entries = config.regularizers
    if not isinstance(entries, (list, tuple)):
        problems.append(f"config.regularizers={entries!r} must be a list of (name, {{kwargs}}) "
                        "pairs, e.g. [('sam', {'rho': 0.05})]")
        return
    for i, entry in enumerate(entries):
        field = f"config.regularizers[{i}]"
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[1], dict)):
            problems.append(f"{field}={entry!r} must be a (name, {{kwargs}}) pair, e.g. "
                            "('sam', {'rho': 0.05})")
            continue
        name, kwargs = entry
        if name not in REGULARIZERS:
            problems.append(f"{field}: {REGULARIZERS.unknown(name)}")
            continue
        regularizer = REGULARIZERS[name]
        params = inspect.signature(regularizer.factory).parameters
        accepted = set(params)
        unknown = sorted(set(kwargs) - accepted)
        if unknown:
            problems.append(f"{field}: {name} takes no argument(s) {unknown}; it takes "
                            f"{sorted(accepted)}")
            continue
        wrong = [f"{k}={v!r}" for k, v in kwargs.items() if not _fits(v, params[k].annotation)]
        if wrong:
            problems.append(f"{field}: {name} {', '.join(wrong)} must be a number")
            continue
        try:
            regularizer.factory(**kwargs)
        except (TypeError, ValueError) as e:
            problems.append(f"{field}: {e}")
            continue
        activation = config.model.activation
        if (regularizer.needs(kwargs) and activation in ACTIVATIONS
                and ablated_twin(activation) is None):
            described = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            problems.append(f"{field}: {name} ({described}) splits the NME with the "
                            "activation's ablated twin, and config.model.activation="
                            f"{activation!r} has none; register one (register_activation(..., "
                            "ablated_twin=)), or choose other arguments")
        problems.extend(f"{field}: {p}" for p in regularizer.check(kwargs, config,
                                                                   num_devices))


def _check_probes(problems: list[str], config: Any, num_devices: int,
                  process_count: int) -> None:
    p = config.probes
    unknown = [k for k in p.kinds if k not in OPERATORS]
    if unknown or len(set(p.kinds)) != len(p.kinds):
        problems.append(f"config.probes.kinds={tuple(p.kinds)!r}: give distinct names from "
                        f"{tuple(OPERATORS)}, or () for the gradient and sparsity probes only")
    # kinds that need a twin of the network (an operator kind declares what it needs)
    split = [k for k in p.kinds if k in OPERATORS and OPERATORS[k].needs]
    activation = config.model.activation
    if split and activation in ACTIVATIONS and ablated_twin(activation) is None:
        problems.append(f"config.probes.kinds: {split} split the NME with the activation's "
                        f"ablated twin, and config.model.activation={activation!r} has none; "
                        "drop them, or register one (register_activation(..., ablated_twin=))")
    if "between_apply_fn" in {n for k in split for n in OPERATORS[k].needs} \
            and not problems and config.model.name in MODELS:
        try:  # a module only: nothing is initialised
            build_model(config.model, 2, ("normalization",))
        except TypeError:
            problems.append(f"config.probes.kinds: {split} need model {config.model.name!r} "
                            "to take ablate_norm (BatchNorm whose statistics add no curvature:"
                            " models.layers.make_norm); drop them, or give the model that "
                            "field")
    for field in ("every_steps", "lanczos_steps", "top_k", "bottom_k", "trace_probes",
                  "density_runs", "batch_size"):
        value = p[field]
        if not isinstance(value, int) or value < 0:
            problems.append(f"config.probes.{field}={value!r} must be an integer >= 0")
    for field in ("num_batches", "density_steps"):
        value = p[field]
        if not isinstance(value, int) or value < 1:
            problems.append(f"config.probes.{field}={value!r} must be an integer >= 1")
    if isinstance(p.trace_probes, int) and p.trace_probes == 1:
        problems.append("config.probes.trace_probes=1 gives no standard error; use >= 2 "
                        "(or 0 for no traces)")
    batch = p.batch_size  # 0 = the training batch, checked above
    if isinstance(batch, int) and batch > 0 and (batch % num_devices or batch % process_count):
        problems.append(f"config.probes.batch_size={batch} is not divisible by {num_devices} "
                        f"devices and {process_count} process(es); use a multiple of "
                        f"{max(num_devices, process_count)}")
    _choice(problems, "config.probes.batch_norm", p.batch_norm, BATCH_NORM_MODES)
    _choice(problems, "config.probes.basis_memory", p.basis_memory, BASIS_MEMORY)
    _choice(problems, "config.probes.precision", p.precision, PRECISIONS)
    _positive(problems, "config.probes.max_basis_mib", p.max_basis_mib)
    _positive(problems, "config.probes.sparsity_threshold", p.sparsity_threshold,
              allow_zero=True)


def validate(config: Any, num_devices: int, process_count: int = 1) -> None:
    """Raises ConfigError listing every problem of `config` for `num_devices` devices.

    First imports the modules `config.modules` names (nme_train.extensions), so that the
    components they register are known to the checks."""
    try:
        import_modules(config.get("modules", ()))
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    problems: list[str] = []
    _registered(problems, DATASETS, config.data.name)
    _choice(problems, "config.data.augment", config.data.augment, AUGMENTATIONS)
    _choice(problems, "config.data.decoder", config.data.decoder, DECODERS)
    if config.data.decoder == "simplejpeg" and not have_simplejpeg():
        problems.append("config.data.decoder='simplejpeg' but simplejpeg is not installed: "
                        "`pip install simplejpeg`, or use 'auto' or 'pil' (same pixels)")
    noise = config.data.get("label_noise", 0.0)
    if not (isinstance(noise, (int, float)) and not isinstance(noise, bool) and 0 <= noise < 1):
        problems.append(f"config.data.label_noise={noise!r} must be a fraction in [0, 1)")
    try:
        check_scheme(config.get("init_from", ""), "config.init_from")
    except StorageError as e:
        problems.append(str(e))
    try:  # gs:// is read through a local copy (nme_train.data.datasets._stage)
        check_scheme(config.data.data_dir, "config.data.data_dir")
    except StorageError as e:
        problems.append(str(e))
    _check_model(problems, config.model)
    _check_optimizer(problems, config.optimizer)

    unknown_axes = set(config.mesh) - set(AXES)
    if unknown_axes:
        problems.append(f"config.mesh has unknown axes {sorted(unknown_axes)}; "
                        f"the mesh axes are {AXES}")
    sizes = mesh_shape(config.mesh, num_devices)
    if sum(1 for a in AXES if config.mesh.get(a, 1) == -1) > 1:
        problems.append("config.mesh: at most one axis may be -1 (= all remaining devices)")
    elif any(s <= 0 for s in sizes.values()) or sizes["data"] * sizes["fsdp"] != num_devices:
        problems.append(
            f"config.mesh={dict(config.mesh)} gives data={sizes['data']} x fsdp={sizes['fsdp']}"
            f", which does not match the {num_devices} devices; make the product "
            f"{num_devices}, or set one axis to -1"
        )
    parallel = num_devices
    for field in ("batch_size", "eval_batch_size"):
        value = config[field]
        if not isinstance(value, int) or value <= 0:
            problems.append(f"config.{field}={value!r} must be a positive integer")
        elif value % parallel or value % process_count:
            multiple = max(parallel, process_count)
            low = max(multiple, value - value % multiple)
            problems.append(
                f"config.{field}={value} is not divisible by the data-parallel size {parallel} "
                f"(data x fsdp devices) and {process_count} process(es); use a multiple of "
                f"{multiple}, e.g. {low} or {low + multiple}"
            )
    _check_accumulation(problems, config, num_devices)
    if "profile" in config:
        _check_profile(problems, config.profile)
    _check_length(problems, config)
    for field in ("log_every_steps", "eval_every_steps"):
        _positive(problems, f"config.{field}", config[field], allow_zero=True)
    _positive(problems, "config.label_smoothing", config.label_smoothing, allow_zero=True)
    if "watchdog_seconds" in config and not (
            isinstance(config.watchdog_seconds, (int, float)) and config.watchdog_seconds >= -1):
        problems.append(f"config.watchdog_seconds={config.watchdog_seconds!r} must be >= 0 "
                        "(0 = off), or -1 (automatic)")
    if config.label_smoothing >= 1:
        problems.append(f"config.label_smoothing={config.label_smoothing} must be < 1")
    _positive(problems, "config.data.num_threads", config.data.num_threads)
    _check_regularizers(problems, config, num_devices)
    if "probes" in config:
        _check_probes(problems, config, num_devices, process_count)
    for field in ("every_steps", "max_to_keep", "keep_every_steps"):
        value = config.checkpoint[field]
        if not isinstance(value, int) or value < 0:
            problems.append(f"config.checkpoint.{field}={value!r} must be an integer >= 0")
    if problems:
        raise ConfigError(problems)
