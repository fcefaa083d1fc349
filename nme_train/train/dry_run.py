"""Dry run: compile a config's training step and probe step for a topology, read no data.

    python -m nme_train.main --config=configs/imagenet_resnet50.py --workdir=/tmp/dry --dry_run
    XLA_FLAGS=--xla_force_host_platform_device_count=64 JAX_PLATFORMS=cpu \
      python -m nme_train.main --config=... --config.mesh.fsdp=8 --workdir=/tmp/dry --dry_run

Builds the model, the mesh and the sharded state as the trainer would (on
the devices present: fake CPU devices stand in for a pod), then lowers and
compiles ahead of time, from shapes only:
  - the training step with the configured regularizers;
  - the probe: the linearisation of the Hessian over one probe batch (the
    largest of the curvature programs) and one Hessian-vector product on its
    residuals, plus the Lanczos basis and where `probes.basis_memory` puts it.
It prints the parameter count, the FLOPs of one step (XLA's count of the
lowered program), the per-device memory of each compiled program
(arguments, outputs, temporaries; peak = their sum less donated buffers),
the FLOPs of a whole probe (each operator's linearisation and matvec, times
the matvecs the probe settings make) and so the probe's share of training
FLOPs at `probes.every_steps`, and the interval that keeps it under 5%.
Memory figures come from the backend that compiled: on fake CPU devices
they describe the CPU program, a close but not exact stand-in for a TPU or
GPU one.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import numpy as np
from absl import logging

from nme_train.curvature.lanczos import apply
from nme_train.curvature.operators import kind_label
from nme_train.curvature.probes import ProbeSettings
from nme_train.data import DATASETS
from nme_train.train.checkpoint import abstract_with_shardings
from nme_train.train.probing import probe_curvature
from nme_train.train.program import build_program
from nme_train.validation import validate


def program_flops(lowered: Any, compiled: Any = None, loop_trips: int = 1) -> float:
    """FLOPs XLA counts in the lowered program, or in the compiled one where the backend
    analyses only that (GPU); NaN when neither says. XLA counts a loop's body once:
    `loop_trips` (a training step's microbatches) scales the count, which is then exact
    up to the work outside the loops (the optimizer's update, O(parameters))."""
    for stage in (lowered, compiled):
        if stage is None:
            continue
        analysis = stage.cost_analysis()
        if isinstance(analysis, (list, tuple)):
            analysis = analysis[0] if analysis else None
        if analysis and analysis.get("flops", 0) > 0:
            return float(analysis["flops"]) * loop_trips
    return float("nan")


def model_flops(program: Any, state: Any, batch: dict) -> float:
    """Model FLOPs of one training step on `batch`: 3x the forward pass's (forward and
    backward, the usual convention), whatever the regularizers add. XLA's count of the
    evaluation step lowered for the batch's shape (a trace; compiled only on a backend
    that counts FLOPs in compiled programs alone)."""
    mask = jax.ShapeDtypeStruct(batch["label"].shape, np.float32,
                                sharding=getattr(batch["label"], "sharding", None))
    lowered = program.eval_step.lower(state, {**batch, "mask": mask})
    flops = program_flops(lowered)
    if not math.isfinite(flops):  # a backend that analyses only compiled programs
        flops = program_flops(lowered, lowered.compile())
    return 3.0 * flops


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


def _lowered_train_step(config: Any, spec: Any, devices: list, k: int) -> tuple[Any, Any]:
    """(config with k microbatches, the training step lowered from shapes)."""
    config = config.copy_and_resolve_references()
    with config.unlocked():
        config.grad_accum_steps = k
    total = config.num_train_steps if config.num_train_steps > 0 else 1000
    program = build_program(config, spec, devices, total_steps=total, steps_per_epoch=1000,
                            rolled_microbatch_loop=True)  # as an accelerator runs it
    state = abstract_with_shardings(program.abstract_state, program.state_sharding)
    size = config.data.image_size or spec.image_size
    batch = {key: jax.ShapeDtypeStruct(shape, dtype, sharding=program.batch_sharding)
             for key, shape, dtype in (
                 ("image", (config.batch_size, size, size, spec.channels), np.uint8),
                 ("label", (config.batch_size,), np.int32))}
    return config, program.train_step.lower(state, batch)


def step_and_probe_flops(config: Any, devices: list | None = None,
                         probe: bool = True) -> dict[str, float]:
    """FLOPs of one training step and (with `probe`) of one probe of `config`, from the
    lowered programs (nothing compiled)."""
    devices = jax.devices()[:1] if devices is None else list(devices)
    spec = DATASETS[config.data.name]
    k = config.get("grad_accum_steps", 1)
    _, lowered = _lowered_train_step(config, spec, devices, k)
    out = {"train_step": program_flops(lowered, loop_trips=k), "probe": 0.0}
    if probe and config.probes.every_steps and (config.probes.kinds or config.probes.alignment):
        program = build_program(config, spec, devices, total_steps=1000, steps_per_epoch=1000)
        state = abstract_with_shardings(program.abstract_state, program.state_sharding)
        out["probe"] = _probe_flops(config, spec, program, state,
                                    config.data.image_size or spec.image_size)["flops"]
    return out


def train_step_memory(config: Any, spec: Any, devices: list, k: int) -> dict[str, Any]:
    """The training step of `config` with k microbatches, compiled from shapes: its compile
    time, FLOPs and per-device memory."""
    start = time.perf_counter()
    config, lowered = _lowered_train_step(config, spec, devices, k)
    compiled = lowered.compile()
    return {"grad_accum_steps": k, "compile_s": time.perf_counter() - start,
            "flops": program_flops(lowered, compiled, loop_trips=k),
            "microbatch_per_device": config.batch_size // len(devices) // k,
            "memory_mib_per_device": memory_mib(compiled)}


def smallest_fitting_k(config: Any, spec: Any, devices: list, memory_gib: float,
                       known: dict[int, dict]) -> dict[str, Any]:
    """The smallest number of microbatches, doubling from config.grad_accum_steps, whose
    training step's peak per device is within `memory_gib`; each k tried, with its peak."""
    per_device = config.batch_size // len(devices)
    k, tried = config.get("grad_accum_steps", 1), []
    while k <= per_device and per_device % k == 0:
        step = known.get(k) or train_step_memory(config, spec, devices, k)
        peak = step["memory_mib_per_device"].get("peak", math.inf)
        tried.append({"grad_accum_steps": k, "peak_mib": peak})
        if peak <= memory_gib * 1024:
            return {"memory_gib": memory_gib, "grad_accum_steps": k, "tried": tried}
        k *= 2
    return {"memory_gib": memory_gib, "grad_accum_steps": None, "tried": tried}


def dry_run(config: Any, devices: list | None = None,
            memory_gib: float | None = None) -> dict[str, Any]:
    """Compiles the training and probe steps of `config` from shapes; returns the figures.
    With `memory_gib`, also the smallest grad_accum_steps whose step fits that memory. A
    probe of no curvature kind and no alignment (E8/E9's activation statistics) has no
    program to compile: probe_step None."""
    devices = jax.devices() if devices is None else list(devices)
    validate(config, len(devices), jax.process_count())
    spec = DATASETS[config.data.name]
    total = config.num_train_steps if config.num_train_steps > 0 else 1000
    program = build_program(config, spec, devices, total_steps=total, steps_per_epoch=1000)
    size = config.data.image_size or spec.image_size
    state = abstract_with_shardings(program.abstract_state, program.state_sharding)
    report: dict[str, Any] = {"parameters": program.num_params, "devices": len(devices),
                              "mesh": dict(program.mesh.shape), "batch_size": config.batch_size,
                              "image_size": size, "regularizers": list(config.regularizers)}

    report["train_step"] = train_step_memory(config, spec, devices,
                                             config.get("grad_accum_steps", 1))
    if memory_gib:
        report["fit"] = smallest_fitting_k(config, spec, devices, memory_gib, {
            report["train_step"]["grad_accum_steps"]: report["train_step"]})

    report["probe_settings_basis_memory"] = config.probes.basis_memory
    if not (config.probes.kinds or config.probes.alignment):
        report["probe_step"] = None  # a probe of no curvature: nothing of it to compile
        return report
    report["probe_step"] = _probe_programs(config, spec, program, state, size)
    probe, step_flops = report["probe_step"], report["train_step"]["flops"]
    if np.isfinite(step_flops) and step_flops > 0:
        every = config.probes.every_steps
        report["probe_share"] = {
            "train_steps_per_probe": probe["flops"] / step_flops,
            "every_steps": every,
            "share": probe["flops"] / (every * step_flops + probe["flops"]) if every else 0.0,
            "every_steps_for_5_percent": math.ceil(19 * probe["flops"] / step_flops),
        }
    return report


def _probe_programs(config: Any, spec: Any, program: Any, state: Any, size: int) -> dict[str, Any]:
    """The probe's programs from shapes: for each kind, the linearisation over one probe
    batch and one operator-vector product (FLOPs; the Hessian's compiled for memory), the
    gradient (alignment), the Lanczos basis and where `basis_memory` puts it."""
    curv, probe_batches = _probe_inputs(config, spec, program, state, size)
    settings = ProbeSettings.from_config(config.probes)
    build = jax.jit(curv.linear_operator, static_argnums=0)
    start = time.perf_counter()
    lowered = build.lower("hessian", state.params, probe_batches)
    compiled = lowered.compile()
    out: dict[str, Any] = {"memory_mib_per_device": memory_mib(compiled)}
    # one Hessian-vector product on the linearisation's residuals, as the probe makes it
    linear = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          lowered.out_info, compiled.output_shardings)
    lowered_matvec = jax.jit(apply).lower(linear, state.params)
    matvec = lowered_matvec.compile()
    out["compile_s"] = time.perf_counter() - start
    out["matvec_memory_mib_per_device"] = memory_mib(matvec)
    out.update(_probe_flops(config, spec, program, state, size,
                            lowered={"hessian": (lowered, lowered_matvec)}))
    where, basis = settings.basis_placement(program.abstract_state.params)
    per_device = basis / program.mesh.shape["fsdp"]
    residuals = out["memory_mib_per_device"].get("output", 0.0)
    out.update({
        "lanczos_basis_mib_total": basis, "lanczos_basis_mib_per_device": per_device,
        "basis_memory": where, "max_basis_mib": settings.max_basis_mib,
        "residuals_mib_per_device": residuals,
        # the linearisation's peak, or the products' (residuals among their arguments)
        # with the basis beside them when it is kept on the device
        "peak_mib_per_device": max(out["memory_mib_per_device"].get("peak", 0.0),
                                   out["matvec_memory_mib_per_device"].get("peak", 0.0)
                                   + (per_device if where == "device" else 0.0)),
    })
    return out


def _probe_inputs(config: Any, spec: Any, program: Any, state: Any, size: int):
    """The probe's curvature functions and its batch, as shapes."""
    probe_batch = config.probes.batch_size or config.batch_size
    probe_batches = [{"inputs": {"images": jax.ShapeDtypeStruct(
        (probe_batch, size, size, spec.channels), np.uint8, sharding=program.batch_sharding),
        "model_state": state.model_state},
        "targets": jax.ShapeDtypeStruct((probe_batch,), np.int32, sharding=program.batch_sharding)}]
    return probe_curvature(config, spec, program.model), probe_batches


def _probe_flops(config: Any, spec: Any, program: Any, state: Any, size: int,
                 lowered: dict[str, tuple[Any, Any]] | None = None) -> dict[str, Any]:
    """A probe's FLOPs from its lowered programs (no compile needed): for each kind, the
    linearisation and one operator-vector product, and the gradient (alignment).
    `lowered`: kind -> (linearisation, matvec) already lowered (not lowered again)."""
    curv, probe_batches = _probe_inputs(config, spec, program, state, size)
    settings = ProbeSettings.from_config(config.probes)
    build = jax.jit(curv.linear_operator, static_argnums=0)
    kinds = {}
    for kind in settings.kinds:
        if lowered and kind in lowered:
            linearise, matvec = lowered[kind]
        else:  # the matvec on the linearisation's outputs (their shapes: out_info)
            linearise = build.lower(kind, state.params, probe_batches)
            matvec = jax.jit(apply).lower(linearise.out_info, state.params)
        kinds[kind] = {"linearise_flops": program_flops(linearise),
                       "matvec_flops": program_flops(matvec)}
    gradient_flops = program_flops(jax.jit(jax.value_and_grad(curv.loss_value)).lower(
        state.params, probe_batches)) if settings.alignment else 0.0
    matvecs = settings.matvecs_per_kind()
    return {"batch_size": probe_batches[0]["targets"].shape[0], "kinds": kinds,
            "matvecs_per_kind": matvecs, "gradient_flops": gradient_flops,
            "flops": gradient_flops + sum(k["linearise_flops"] + matvecs * k["matvec_flops"]
                                          for k in kinds.values())}


def flop_text(flops: float) -> str:
    """FLOPs with a readable prefix: '3.2 GFLOP'."""
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {prefix}FLOP"
    return f"{flops:.3g} FLOP"


def print_report(report: dict[str, Any]) -> None:
    """The report as log lines (main process)."""
    if jax.process_index() != 0:
        return
    lines = [f"dry run: {report['parameters']:,} parameters; mesh {report['mesh']} over "
             f"{report['devices']} device(s); batch {report['batch_size']} at "
             f"{report['image_size']}x{report['image_size']}; regularizers "
             f"{report['regularizers'] or 'none'}"]
    t = report["train_step"]
    micro = (f" in {t['grad_accum_steps']} microbatches of {t['microbatch_per_device']} per "
             "device" if t["grad_accum_steps"] > 1 else "")
    for name, what in (("train_step", "{} per step" + micro),
                       ("probe_step", "{} per probe; the Hessian's linearisation")):
        r = report[name]
        if r is None:
            lines.append(f"  {name}: none (probes.kinds is empty and probes.alignment off: "
                         "no curvature to compile)")
            continue
        m = r["memory_mib_per_device"]
        lines.append(f"  {name}: compiled in {r['compile_s']:.1f} s; "
                     f"{what.format(flop_text(r['flops']))}, per device: arguments "
                     f"{m.get('argument', 0):.0f} MiB, outputs {m.get('output', 0):.0f} MiB, "
                     f"temporaries {m.get('temp', 0):.0f} MiB, peak {m.get('peak', 0):.0f} MiB")
    fit = report.get("fit")
    if fit:
        tried = ", ".join(f"k={x['grad_accum_steps']}: {x['peak_mib'] / 1024:.1f} GiB"
                          for x in fit["tried"])
        verdict = (f"grad_accum_steps={fit['grad_accum_steps']} fits"
                   if fit["grad_accum_steps"] else "no grad_accum_steps fits")
        lines.append(f"  memory: {verdict} in {fit['memory_gib']:g} GiB per device (training "
                     f"step peak: {tried})")
    p = report["probe_step"]
    if p is not None:
        lines += _probe_lines(report, p)
    for line in lines:
        logging.info("%s", line)


def _probe_lines(report: dict[str, Any], p: dict[str, Any]) -> list[str]:
    lines = ["  probe of batch {}: {} matvecs per operator; {}; total {}".format(
        p["batch_size"], p["matvecs_per_kind"], ", ".join(
            f"{kind_label(k)}: linearise {flop_text(v['linearise_flops'])} + matvec "
            f"{flop_text(v['matvec_flops'])}" for k, v in p["kinds"].items()),
        flop_text(p["flops"]))]
    m = p["matvec_memory_mib_per_device"]
    lines.append(f"  probe memory per device: residuals {p['residuals_mib_per_device']:.0f} MiB, "
                 f"matvec temporaries {m.get('temp', 0):.0f} MiB, Lanczos basis "
                 f"{p['lanczos_basis_mib_per_device']:.0f} MiB ({p['lanczos_basis_mib_total']:.0f}"
                 f" MiB in all, on the {p['basis_memory']}: basis_memory="
                 f"{report['probe_settings_basis_memory']!r}, max_basis_mib "
                 f"{p['max_basis_mib']:.0f}); peak {p['peak_mib_per_device']:.0f} MiB")
    share = report.get("probe_share")
    if share:
        every = (f"every {share['every_steps']} steps: {100 * share['share']:.1f}% of training "
                 "FLOPs; " if share["every_steps"] else "")
        lines.append(f"  probe cost: {share['train_steps_per_probe']:.2f} training steps; {every}"
                     f"at most 5% from every {share['every_steps_for_5_percent']} steps")
    return lines
