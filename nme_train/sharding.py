"""Device mesh, sharding rules, and global batches.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data
parallelism whose parameters and optimizer state are also split, ZeRO-3
style). The batch is split over both axes; a parameter is split over `fsdp`
along its largest divisible dimension when it is large enough, and is
replicated otherwise (rules applied to an `eval_shape` tree, so nothing is
materialised before its sharding is known). XLA inserts the gathers.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("data", "fsdp")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_config: Any, num_devices: int) -> dict[str, int]:
    """Axis sizes from `config.mesh` with one -1 filled in from the device count."""
    sizes = {axis: int(mesh_config.get(axis, 1)) for axis in AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if free:
        known = int(np.prod([s for s in sizes.values() if s != -1]))
        sizes[free[0]] = num_devices // known if known and num_devices % known == 0 else 0
    return sizes


def make_mesh(mesh_config: Any, devices: list | None = None) -> Mesh:
    """A (data, fsdp) mesh over `devices` (all devices by default)."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(mesh_config, len(devices))
    shape = tuple(sizes[a] for a in AXES)
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh {sizes} does not cover the {len(devices)} devices")
    try:
        device_array = mesh_utils.create_device_mesh(shape, devices)
    except (AssertionError, ValueError, NotImplementedError):
        device_array = np.asarray(devices).reshape(shape)
    return Mesh(device_array, AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, P(BATCH_AXES))


def microbatch_sharding(mesh: Mesh) -> NamedSharding:
    """Microbatches [k, B / k, ...]: the k axis whole, each microbatch over every device."""
    return NamedSharding(mesh, P(None, BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same value on every device."""
    return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """FSDP rule: split the largest dimension divisible by the fsdp size, if big enough."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(abstract_tree: Any, mesh: Mesh, min_size: int) -> Any:
    """NamedShardings for every leaf of an `eval_shape` tree under the FSDP rule."""
    fsdp_size = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, param_spec(tuple(leaf.shape), fsdp_size, min_size)),
        abstract_tree,
    )


def global_batch(local_batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict:
    """Assembles each process's rows into global arrays sharded over the batch axes."""
    return {
        key: jax.make_array_from_process_local_data(sharding, value)
        for key, value in local_batch.items()
    }
