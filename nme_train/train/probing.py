"""Curvature probes of a training run: the trainer's periodic hook and nme-probe.

`RunProbes` binds the curvature engine (nme_train.curvature) to one
experiment: the model with its BatchNorm mode, the training loss, a fixed
set of probe batches and the parameters' shardings. `probe(state, step)`
runs the probe suite and the activation-sparsity probe on a TrainState and
returns one record; `write(record, ...)` appends it as a JSON line (main
process only) and sends its scalars to TensorBoard.

Probe batches are the first `probes.num_batches` batches of a fixed
shuffle (seed `probes.seed`) of the training split, without augmentation:
the same examples at every probe, so the figures of one run are comparable
over training. BatchNorm: "batch_stats" probes the function the training
step differentiates (statistics of the probe batch; the running averages
are not updated), "running_average" the evaluation-mode network.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax

from nme_train import storage
from nme_train.curvature import Curvature, softmax_cross_entropy
from nme_train.curvature.operators import OPERATORS
from nme_train.curvature.probes import ProbeSettings, ProbeSuite, record_kinds
from nme_train.data import train_batches
from nme_train.models import build_ablated_model, get_activation
from nme_train.models.sparsity import activation_probe
from nme_train.optim import stability_threshold
from nme_train.sharding import global_batch
from nme_train.train.rundir import read_jsonl
from nme_train.train.step import make_normalize

PROBES_FILE = "probes.jsonl"


def probe_curvature(config: Any, spec: Any, model: Any) -> Curvature:
    """The training loss as the probes see it: uint8 images in, BatchNorm per
    `config.probes.batch_norm`, the configured label smoothing; with the network whose
    activations are their ablated twins beside it, and the one whose BatchNorm statistics
    add no curvature either (the NME split by source), when the activation has a twin."""
    normalize = make_normalize(spec.mean, spec.std)
    train = config.probes.batch_norm == "batch_stats"

    def applied(module):
        def apply_fn(params, inputs):
            variables = {"params": params, **inputs["model_state"]}
            x = normalize(inputs["images"])
            if train and inputs["model_state"]:
                return module.apply(variables, x, train=True, mutable=["batch_stats"])[0]
            return module.apply(variables, x, train=train)
        return apply_fn

    twins = [build_ablated_model(config.model, spec.num_classes, ablate)
             for ablate in (("activation",), ("activation", "normalization"))]
    return Curvature(applied(model), softmax_cross_entropy(config.label_smoothing),
                     *[None if twin is None else applied(twin) for twin in twins])


class RunProbes:
    """The probe suite of one experiment (model, loss, probe batches, shardings)."""

    def __init__(self, config: Any, spec: Any, program: Any, data_config: Any,
                 host_batches: list[dict] | None = None):
        p = config.probes
        self.config = config
        self.train_mode = p.batch_norm == "batch_stats"
        self.curvature = probe_curvature(config, spec, program.model)
        settings = ProbeSettings.from_config(p)
        if settings.lanczos_steps > program.num_params:  # a Krylov space: at most the dimension
            settings = dataclasses.replace(settings, lanczos_steps=program.num_params)
        self.suite = ProbeSuite(self.curvature, settings, program.state_sharding.params)
        self.normalize = make_normalize(spec.mean, spec.std)
        self.activations = activation_probe(
            program.model, get_activation(config.model.activation, beta=config.model.beta),
            p.sparsity_threshold, self.train_mode)
        # the fixed probe batches (host numpy); given, e.g. synthetic ones, or read
        self.host_batches = host_batches or _probe_batches(config, spec, data_config)
        self.batch_sharding = program.batch_sharding

    def probe(self, state: Any, step: int, learning_rate: float | None = None) -> dict:
        """The probe record at `state`; with the step's `learning_rate`, also the sharpness
        against the optimizer's stability threshold."""
        images = [global_batch(b, self.batch_sharding) for b in self.host_batches]
        batches = [{"inputs": {"images": b["image"], "model_state": state.model_state},
                    "targets": b["label"]} for b in images]
        record = self.suite.run(state.params, batches, step)
        threshold = self.config.probes.sparsity_threshold
        variables = {"params": state.params, **state.model_state}
        sites, dead = self.activations(
            variables, [{"inputs": self.normalize(b["image"])} for b in images])
        record["sparsity/threshold"] = threshold
        record["sparsity/layers"] = sites
        record["sparsity/mean"] = sum(sites.values()) / len(sites) if sites else None
        record["dead_units/layers"] = dead
        record["dead_units/mean"] = sum(dead.values()) / len(dead) if dead else None
        record.update(stability(record, self.config.optimizer, learning_rate))
        return record


def stability(record: dict, optimizer: Any, learning_rate: float | None) -> dict:
    """lambda_max(H) against the step size's stability threshold (2/eta for SGD, (2 + 2 mu)/eta
    for heavy-ball momentum, (2 + 2 mu)/((1 + 2 mu) eta) for Nesterov; nme_train.optim): a
    ratio above 1 is an unstable step along H's top eigenvector (of the unregularized loss,
    weight decay aside). {} without the top eigenvalue, the learning rate or a threshold."""
    top = record.get("hessian/top_eigenvalues")
    if not top or learning_rate is None:
        return {}
    threshold = stability_threshold(optimizer, learning_rate)
    out = {"stability/learning_rate": float(learning_rate), "stability/sharpness": top[0]}
    if threshold is not None:
        out["stability/threshold"] = threshold
        out["stability/ratio"] = top[0] / threshold
    return out


def _probe_batches(config: Any, spec: Any, data_config: Any) -> list[dict]:
    """This process's rows of the fixed probe batches (host numpy)."""
    p = config.probes
    probe_data = data_config.copy_and_resolve_references()
    with probe_data.unlocked():
        probe_data.augment = "none"
        probe_data.num_workers = 0
    it = train_batches(spec, probe_data, p.batch_size or config.batch_size, p.seed, 0,
                       jax.process_index(), jax.process_count())
    return [next(it) for _ in range(p.num_batches)]


def write_record(workdir: str, record: dict, filename: str = PROBES_FILE,
                 writer: Any = None) -> None:
    """Appends `record` to DIR/`filename` (main process only) and its scalars to `writer`."""
    if jax.process_index() != 0:
        return
    storage.append_text(os.path.join(workdir, filename), json.dumps(record) + "\n")
    if writer is not None:
        writer.probe_record(record)


def summary(record: dict) -> str:
    """One console line for a probe record."""
    parts = [f"probe at step {record['step']}"]
    for kind in record_kinds(record):
        short = OPERATORS[kind].label
        top = record.get(f"{kind}/top_eigenvalues")
        if top:
            text = f"{short} top {top[0]:.4g}"
            bottom = record.get(f"{kind}/bottom_eigenvalues")
            if bottom and not OPERATORS[kind].psd:  # an indefinite operator's negative end
                text += f" bottom {bottom[0]:.4g}"
            parts.append(text)
        if f"{kind}/trace" in record:
            parts.append(f"tr {short} {record[f'{kind}/trace']:.4g}"
                         f"±{record[f'{kind}/trace_se']:.2g}")
    if "stability/ratio" in record:
        parts.append(f"lambda_max(H)/stable {record['stability/ratio']:.3g}")
    if record.get("dead_units/mean"):
        parts.append(f"dead units {100 * record['dead_units/mean']:.1f}%")
    parts.append(f"{record['matvecs']} matvecs in {record['seconds']:.1f} s")
    return " | ".join(parts)


def read_probes(workdir: str, filename: str = PROBES_FILE) -> list[dict]:
    """The probe records of a run (DIR/probes.jsonl, or another file of the same form)."""
    return read_jsonl(os.path.join(workdir, filename))
