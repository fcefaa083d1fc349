"""The ImageNet-scale checks that need an accelerator, in one run.

    python tools/accelerator_check.py --out docs/measurements/accelerator_check   # GPU / TPU
    python tools/accelerator_check.py --smoke --out /tmp/check                    # CPU, tiny

1. Input pipeline feeding the real ResNet-50 step (configs/imagenet_resnet50.py,
   bf16, 224 px): images/s with real JPEG decoding (the trainer's pipeline
   over a synthetic ImageNet built first, `--images` JPEGs of ImageNet's
   sizes; grain workers = the machine's cores, up to 16) against the same
   step on a device-resident synthetic batch.
2. One probe of ResNet-50 at ImageNet size: Lanczos on H and G until the
   top eigenvalue's error bound is below 1e-3 relative (`--lanczos` steps at
   most), with the Hutchinson traces of H, G and NME; seconds, and the
   device's peak memory.
3. The float32 / bf16 numerics check (tools/check_numerics.py).
4. Gradient accumulation: the ResNet-50 step (plain, and with the gradient penalty
   rho = 0.1) on a device-resident batch with config.grad_accum_steps = k for each of
   `--accum_ks`: median seconds per step, XLA's peak memory of the compiled step and
   the device's measured peak; then a profiler trace of 3 steps at the largest k,
   annotated per step, in OUT/tensorboard/plugins/profile (TensorBoard's Profile tab).

5. The update by source at the paper's ImageNet scale: one narrowed point of each
   arm it added (configs/paper/contrasts.py:imagenet: GELU's penalty with
   G + NME_act, ReLU's with G only), in the scale's microbatches (PAPER_ACCUM) on
   a device-resident batch: median seconds per step, XLA's peak memory, the loss
   over the steps (the penalty with H: part 4).

Each part writes one JSON line to OUT/accelerator_check.jsonl and prints a
summary; a part that cannot run (a missing package, out of memory) writes
its error and the others still run. `--smoke` shrinks everything (a
ResNet-10 of width 4 at 32 px, a small CNN for the numerics and the arms,
the probe of H alone, the penalty at the largest k alone, a few steps) so
that the script itself is tested on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import traceback

import jax
import numpy as np

from nme_train.cli import CHECKOUT, checkout_module

ROOT = CHECKOUT


def resnet50(args: argparse.Namespace):
    return narrowed(checkout_module("configs/imagenet_resnet50.py").get_config(), args)


def narrowed(c, args: argparse.Namespace):
    """An ImageNet config at this check's batch, data and devices (smoke: ResNet-10)."""
    c.batch_size = c.eval_batch_size = args.batch
    c.data.data_dir = args.data_dir
    c.data.num_workers = min(16, os.cpu_count() or 1)
    c.data.num_threads = c.data.prefetch = 8
    c.mesh.data, c.mesh.fsdp = -1, 1
    if args.smoke:  # the same code on a CPU: ResNet-10's blocks compile much faster
        c.model.depth, c.model.width, c.data.image_size, c.model.dtype = 10, 4, 32, "float32"
        c.data.num_workers = 0
    return c


def timed_steps(step, state, batches, steps: int) -> tuple[float, object]:
    """Median seconds per step over `steps` steps after two warm-up steps."""
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        state, metrics = step(state, next(batches))
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times), state


def pipeline_part(args: argparse.Namespace) -> dict:
    from nme_train.data import DATASETS, train_batches
    from nme_train.data.prepare import prepare_synthetic_imagenet
    from nme_train.sharding import global_batch
    from nme_train.train.program import build_program, device_batches

    if not os.path.isdir(os.path.join(args.data_dir, "imagenet2012")):
        start = time.perf_counter()
        # (smoke: a few small JPEGs, written faster than worker processes start)
        prepare_synthetic_imagenet(args.data_dir, args.images, 16,
                                   processes=1 if args.smoke else os.cpu_count() or 1,
                                   short_side=(40, 60) if args.smoke else (400, 500))
        print(f"built the synthetic ImageNet in {time.perf_counter() - start:.0f} s", flush=True)
    config = resnet50(args)
    spec = DATASETS["imagenet2012"]
    devices = jax.devices()
    program = build_program(config, spec, devices, total_steps=1000, steps_per_epoch=100)
    state = program.init()
    host = train_batches(spec, config.data, config.batch_size, 0, 0, jax.process_index(),
                         jax.process_count())
    real_s, state = timed_steps(program.train_step, state,
                                device_batches(host, program.batch_sharding), args.steps)
    first = next(host)
    fixed = global_batch(first, program.batch_sharding)

    def same():
        while True:
            yield fixed

    synthetic_s, state = timed_steps(program.train_step, state, same(), args.steps)
    return {"part": "pipeline", "batch": config.batch_size, "devices": len(devices),
            "device": devices[0].device_kind, "workers": config.data.num_workers,
            "decoder": config.data.decoder, "image_size": config.data.image_size,
            "images_per_s_real_decoding": config.batch_size / real_s,
            "images_per_s_synthetic": config.batch_size / synthetic_s,
            "fed_fraction": synthetic_s / real_s, "host_batch": first}


def probe_part(args: argparse.Namespace, host_batch: dict | None) -> dict:
    from nme_train.curvature.lanczos import LanczosResult
    from nme_train.data import DATASETS
    from nme_train.train.probing import RunProbes
    from nme_train.train.program import build_program

    config = resnet50(args)
    c = config.probes
    # (smoke: H alone; G's products compile in the test suite's sharded probe run)
    c.kinds = ("hessian",) if args.smoke else ("hessian", "gauss_newton")
    c.lanczos_steps, c.top_k, c.bottom_k = args.lanczos, 1, 1
    c.trace_probes, c.batch_size, c.alignment = 10, args.probe_batch, False
    spec = DATASETS["imagenet2012"]
    program = build_program(config, spec, jax.devices(), total_steps=1000, steps_per_epoch=100)
    state = program.init()
    if host_batch is None:  # no pipeline: random images of the right shape
        rng = np.random.default_rng(0)
        size = config.data.image_size
        host_batch = {"image": rng.integers(0, 256, (args.probe_batch, size, size, 3), np.uint8),
                      "label": rng.integers(0, 1000, args.probe_batch).astype(np.int32)}
    host = {k: np.asarray(v)[:args.probe_batch] for k, v in host_batch.items()}
    probes = RunProbes(config, spec, program, None, host_batches=[host])
    start = time.perf_counter()
    record = probes.probe(state, 0)
    seconds = time.perf_counter() - start
    out = {"part": "probe", "probe_batch": args.probe_batch, "lanczos_steps": args.lanczos,
           "seconds_with_compile": seconds, "matvecs": record["matvecs"]}
    for kind in c.kinds:
        t = record[f"{kind}/lanczos"]
        steps_to = None
        for m in range(2, len(t["alphas"]) + 1):
            (value,), (bound,) = LanczosResult(t["alphas"][:m], t["betas"][:m]).top(1)
            if bound <= 1e-3 * abs(value):
                steps_to = m
                break
        out[kind] = {"top": record[f"{kind}/top_eigenvalues"][0],
                     "error_bound": record[f"{kind}/top_error_bounds"][0],
                     "lanczos_steps_to_1e-3": steps_to,
                     "trace": record[f"{kind}/trace"], "trace_se": record[f"{kind}/trace_se"]}
    start = time.perf_counter()
    probes.probe(state, 0)  # compiled now
    out["seconds"] = time.perf_counter() - start
    stats = jax.devices()[0].memory_stats() or {}
    out["peak_memory_gib"] = stats.get("peak_bytes_in_use", float("nan")) / 2**30
    return out


def numerics_part(args: argparse.Namespace) -> dict:
    command = [sys.executable, os.path.join(ROOT, "tools", "check_numerics.py")]
    if args.smoke:
        command += ["--config", "configs/default.py", "--batch_size", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise RuntimeError(result.stderr.strip().splitlines()[-1])
    return {"part": "numerics", **json.loads(result.stdout.strip().splitlines()[-1])}


def accumulation_part(args: argparse.Namespace) -> dict:
    from nme_train.data import DATASETS
    from nme_train.sharding import global_batch
    from nme_train.train.dry_run import memory_mib
    from nme_train.train.profiling import PROFILE_SUBDIR

    spec = DATASETS["imagenet2012"]
    out = {"part": "accumulation", "batch": args.batch, "devices": jax.device_count()}
    for name, regularizers in (("plain", ()), ("gradient_penalty", (("gradient_penalty",
                                                                      {"rho": 0.1}),))):
        rows = []
        # (smoke: the penalty at the largest k alone; each k compiles the step anew)
        for k in args.accum_ks[-1:] if args.smoke and regularizers else args.accum_ks:
            config = resnet50(args)
            config.regularizers, config.grad_accum_steps = regularizers, k
            program, state, batch = _step_on_a_fixed_batch(config, spec, global_batch)
            compiled = program.train_step.lower(state, batch).compile()
            seconds, state = timed_steps(compiled, state, _forever(batch), args.steps)
            stats = jax.devices()[0].memory_stats() or {}
            rows.append({"k": k, "step_s": seconds, "xla_peak_gib":
                         memory_mib(compiled).get("peak", float("nan")) / 1024,
                         "device_peak_gib_so_far":
                         stats.get("peak_bytes_in_use", float("nan")) / 2**30})
        for row in rows if rows[0]["k"] == 1 else ():
            row["time_ratio_to_k1"] = row["step_s"] / rows[0]["step_s"]
        out[name] = rows
    trace_dir = os.path.join(args.out, "tensorboard", PROFILE_SUBDIR)
    jax.profiler.start_trace(os.path.join(args.out, "tensorboard"))
    for i in range(3):
        with jax.profiler.StepTraceAnnotation("train", step_num=i):
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    out["trace"] = {"k": args.accum_ks[-1], "regularizers": name, "dir": trace_dir,
                    "files": sorted(os.path.relpath(os.path.join(d, f), args.out)
                                    for d, _, fs in os.walk(trace_dir) for f in fs)}
    return out


# the arms the update by source added (GELU's with G only is E10's; the penalty with H
# is part 4's, on the same ResNet-50)
ARMS = tuple(f"activation={a},method={m},rho=0.1,seed=0" for a, m in (
    ("gelu", "gp_nme_act"), ("relu", "gp_no_nme")))


def arms_part(args: argparse.Namespace) -> dict:
    from nme_train.data import DATASETS
    from nme_train.sharding import global_batch
    from nme_train.train.dry_run import memory_mib

    contrasts = checkout_module("configs/paper/contrasts.py")
    spec = DATASETS["imagenet2012"]
    out = {"part": "arms", "batch": args.batch, "devices": jax.device_count(), "arms": {}}
    for point in ARMS:
        config = narrowed(contrasts.get_config(f"imagenet/{point}"), args)
        if args.smoke:  # on a small BatchNorm CNN (a ResNet's penalty step compiles in the
            # accumulation part, the update's nested twin in tests/test_paper.py's WRN dry run)
            config.model.name, config.model.features, config.model.hidden = "cnn", (8, 16), (32,)
        per_device = args.batch // jax.device_count()
        # the scale's k where this batch allows it (smoke: one microbatch; the microbatch
        # loop compiles for long on a CPU and is the accumulation part's)
        if args.smoke or per_device % config.grad_accum_steps:
            config.grad_accum_steps = 1
        program, state, batch = _step_on_a_fixed_batch(config, spec, global_batch)
        compiled = program.train_step.lower(state, batch).compile()
        losses = []

        def step(state, batch, compiled=compiled, losses=losses):
            state, metrics = compiled(state, batch)
            losses.append(float(metrics["loss"]))
            return state, metrics

        seconds, state = timed_steps(step, state, _forever(batch), args.steps)
        out["arms"][point] = {
            "regularizers": [list(r) for r in config.regularizers],
            "grad_accum_steps": config.grad_accum_steps, "step_s": seconds,
            "xla_peak_gib": memory_mib(compiled).get("peak", float("nan")) / 1024,
            "losses": losses}
    return out


def _step_on_a_fixed_batch(config, spec, global_batch):
    from nme_train.train.program import build_program

    program = build_program(config, spec, jax.devices(), total_steps=1000, steps_per_epoch=100)
    size = config.data.image_size
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (config.batch_size, size, size, 3), np.uint8),
            "label": rng.integers(0, 1000, config.batch_size).astype(np.int32)}
    return program, program.init(), global_batch(host, program.batch_sharding)


def _forever(batch):
    while True:
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the JSON lines")
    parser.add_argument("--data_dir", default=None, help="default: OUT/data")
    parser.add_argument("--images", type=int, default=4096, help="synthetic training JPEGs")
    parser.add_argument("--batch", type=int, default=256, help="global training batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per setting")
    parser.add_argument("--probe_batch", type=int, default=128)
    parser.add_argument("--lanczos", type=int, default=40, help="Lanczos steps at most")
    parser.add_argument("--accum_ks", type=int, nargs="+", default=[1, 2, 4],
                        help="grad_accum_steps to time (part accumulation)")
    parser.add_argument("--parts", default="pipeline,probe,numerics,accumulation,arms")
    parser.add_argument("--smoke", action="store_true", help="tiny settings (a CPU test)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.images, args.batch, args.steps, args.probe_batch, args.lanczos = 32, 8, 2, 8, 6
        args.accum_ks = [1, 2]
    os.makedirs(args.out, exist_ok=True)
    args.data_dir = args.data_dir or os.path.join(args.out, "data")
    path = os.path.join(args.out, "accelerator_check.jsonl")
    print(f"devices: {jax.devices()}; jax {jax.__version__}", flush=True)
    failed, host_batch = 0, None
    for part in args.parts.split(","):
        start = time.perf_counter()
        try:
            if part == "pipeline":
                row = pipeline_part(args)
                host_batch = row.pop("host_batch")
            elif part == "probe":
                row = probe_part(args, host_batch)
            elif part == "numerics":
                row = numerics_part(args)
            elif part == "accumulation":
                row = accumulation_part(args)
            elif part == "arms":
                row = arms_part(args)
            else:
                raise ValueError(f"unknown part {part!r}")
        except Exception as e:  # noqa: BLE001 - report it, run the other parts
            failed += 1
            row = {"part": part, "error": f"{type(e).__name__}: {e}",
                   "traceback": traceback.format_exc(limit=3)}
        row["wall_s"] = time.perf_counter() - start
        row["device"] = jax.devices()[0].device_kind
        with open(path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "traceback"}, default=float),
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
