"""Dry run: compile a config's training step and probe step for a topology, read no data.

    python -m nme_train.main --config=configs/imagenet_resnet50.py --workdir=/tmp/dry --dry_run
    XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu \
      python -m nme_train.main --config=... --config.mesh.fsdp=8 --workdir=/tmp/dry --dry_run

Builds the model, the mesh and the sharded state as the trainer would (on
the devices present: fake CPU devices stand in for a pod), then lowers and
compiles ahead of time, from shapes only:
  - the training step with the configured regularizers;
  - the probe step: the linearisation of the Hessian over one probe batch
    (the largest of the curvature programs), plus the size of the Lanczos
    basis the probes would hold.
It prints the parameter count, the FLOPs of one step (XLA's count of the
lowered program) and the per-device memory of each compiled program
(arguments, outputs, temporaries; peak = their sum less donated buffers).
Memory figures come from the backend that compiled: on fake CPU devices
they describe the CPU program, a close but not exact stand-in for a TPU or
GPU one.
"""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from absl import logging

from nme_train.curvature.probes import basis_bytes
from nme_train.data import DATASETS
from nme_train.train.checkpoint import abstract_with_shardings
from nme_train.train.experiment import build_experiment
from nme_train.train.probing import probe_curvature
from nme_train.validation import validate


def program_flops(lowered: Any, compiled: Any = None) -> float:
    """FLOPs XLA counts in the lowered program, or in the compiled one where the backend
    analyses only that (GPU); NaN when neither says."""
    for stage in (lowered, compiled):
        if stage is None:
            continue
        analysis = stage.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else None
        if analysis and analysis.get("flops", 0) > 0:
            return float(analysis["flops"])
    return float("nan")


def memory_mib(compiled: Any) -> dict[str, float]:
    """Per-device MiB of a compiled program: argument, output, temp, alias, and peak
    (arguments + outputs + temporaries - donated buffers); {} where not reported."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    mib = {k: getattr(m, f"{k}_size_in_bytes", 0) / 2**20
           for k in ("argument", "output", "temp", "alias", "generated_code")}
    mib["peak"] = mib["argument"] + mib["output"] + mib["temp"] - mib["alias"]
    return mib


def dry_run(config: Any, devices: list | None = None) -> dict[str, Any]:
    """Compiles the training and probe steps of `config` from shapes; returns the figures."""
    devices = jax.devices() if devices is None else list(devices)
    validate(config, len(devices), jax.process_count())
    spec = DATASETS[config.data.name]
    total = config.num_train_steps if config.num_train_steps > 0 else 1000
    exp = build_experiment(config, spec, devices, total_steps=total, steps_per_epoch=1000)
    size = config.data.image_size or spec.image_size
    batch = {
        "image": jax.ShapeDtypeStruct((config.batch_size, size, size, spec.channels), np.uint8,
                                      sharding=exp.batch_sharding),
        "label": jax.ShapeDtypeStruct((config.batch_size,), np.int32,
                                      sharding=exp.batch_sharding),
    }
    state = abstract_with_shardings(exp.abstract_state, exp.state_sharding)
    report: dict[str, Any] = {"parameters": exp.num_params, "devices": len(devices),
                              "mesh": dict(exp.mesh.shape), "batch_size": config.batch_size,
                              "image_size": size, "regularizers": list(config.regularizers)}

    start = time.perf_counter()
    lowered = exp.train_step.lower(state, batch)
    compiled = lowered.compile()
    report["train_step"] = {"compile_s": time.perf_counter() - start,
                            "flops": program_flops(lowered, compiled),
                            "memory_mib_per_device": memory_mib(compiled)}

    curv = probe_curvature(config, spec, exp.model)
    probe_batch = config.probes.batch_size or config.batch_size
    probe_batches = [{"inputs": {"images": jax.ShapeDtypeStruct(
        (probe_batch, size, size, spec.channels), np.uint8, sharding=exp.batch_sharding),
        "model_state": state.model_state},
        "targets": jax.ShapeDtypeStruct((probe_batch,), np.int32, sharding=exp.batch_sharding)}]
    start = time.perf_counter()
    lowered = jax.jit(curv.linear_operator, static_argnums=0).lower(
        "hessian", state.params, probe_batches)
    compiled = lowered.compile()
    basis = basis_bytes(exp.abstract_state.params, config.probes.lanczos_steps) / 2**20
    report["probe_step"] = {"compile_s": time.perf_counter() - start,
                            "flops": program_flops(lowered, compiled),
                            "memory_mib_per_device": memory_mib(compiled),
                            "lanczos_basis_mib_total": basis,
                            "lanczos_basis_mib_per_device": basis / exp.mesh.shape["fsdp"]}
    return report


def print_report(report: dict[str, Any]) -> None:
    """The report as log lines (main process)."""
    if jax.process_index() != 0:
        return
    lines = [f"dry run: {report['parameters']:,} parameters; mesh {report['mesh']} over "
             f"{report['devices']} device(s); batch {report['batch_size']} at "
             f"{report['image_size']}x{report['image_size']}; regularizers "
             f"{report['regularizers'] or 'none'}"]
    for name in ("train_step", "probe_step"):
        r = report[name]
        m = r["memory_mib_per_device"]
        lines.append(f"  {name}: compiled in {r['compile_s']:.1f} s; "
                     f"{r['flops'] / 1e12:.3f} TFLOP per step; per device: arguments "
                     f"{m.get('argument', 0):.0f} MiB, outputs {m.get('output', 0):.0f} MiB, "
                     f"temporaries {m.get('temp', 0):.0f} MiB, peak {m.get('peak', 0):.0f} MiB")
    p = report["probe_step"]
    lines.append(f"  Lanczos basis: {p['lanczos_basis_mib_total']:.0f} MiB "
                 f"({p['lanczos_basis_mib_per_device']:.0f} MiB per device with fsdp sharding)")
    for line in lines:
        logging.info("%s", line)
