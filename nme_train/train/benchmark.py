"""What the benchmark commands share: an experiment on one device fed a synthetic batch,
and timing rounds that alternate over the things compared."""

from __future__ import annotations

import time

import jax
import numpy as np

from nme_train.data import DATASETS
from nme_train.sharding import global_batch
from nme_train.train.program import build_program


def one_device_experiment(config, devices=None, **build_options):
    """(experiment, spec, synthetic batch, initial state) on one device (or the parameters
    sharded over `devices`), no data read.

    The batch is random uint8 images of the dataset's shape and random labels.
    """
    devices = jax.devices()[:1] if devices is None else list(devices)
    config.mesh.data, config.mesh.fsdp = 1, len(devices)
    spec = DATASETS[config.data.name]
    size = config.data.image_size or spec.image_size
    rng = np.random.default_rng(0)
    host = {"image": rng.integers(0, 256, (config.batch_size, size, size, spec.channels),
                                  dtype=np.uint8),
            "label": rng.integers(0, spec.num_classes, config.batch_size).astype(np.int32)}
    program = build_program(config, spec, devices, total_steps=10_000,
                            steps_per_epoch=100, **build_options)
    return program, spec, global_batch(host, program.batch_sharding), program.init()


def time_alternating(runs: dict, rounds: int, steps: int) -> None:
    """Times `steps` steps of each run per round, rounds alternating over the runs.

    Each run is a dict with "step" (compiled), "state", "batch" and a "times"
    list that receives the mean seconds per step of each round.
    """
    for _ in range(rounds):
        for run in runs.values():
            start = time.perf_counter()
            for _ in range(steps):
                run["state"], metrics = run["step"](run["state"], run["batch"])
            jax.block_until_ready((run["state"], metrics))
            run["times"].append((time.perf_counter() - start) / steps)
