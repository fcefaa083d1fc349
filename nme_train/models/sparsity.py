"""Probes of the activations' inputs: sigma'' sparsity (E9) and dead units.

For ReLU, sigma'' is zero except at 0, so a network's NME is nothing but
kinks; for beta-GELU it is spread over about 1/beta around 0. The probe
reads the pre-activations that `nme_train.models.layers.activate` records
and counts the fraction with |sigma''(x)| above a threshold, and the
fraction of units (features, or channels of a convolution) whose
pre-activation is <= 0 on every probe example and position: for ReLU a dead
unit, which passes no signal and no gradient (for GELU a nearly silent one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from nme_train.models.layers import PREACTIVATIONS


def activation_probe(model: Any, activation: Any, threshold: float, train: bool) -> Any:
    """A function (variables, batches) -> ({site: fraction of |sigma''(x)| > threshold} (E9),
    {site: fraction of dead units}).

    `model` is a flax module whose activations go through
    `nme_train.models.layers.activate`; `batches` hold normalised "inputs".
    Sites are named by module path and call index; the fractions are over
    all probe examples. The per-batch program is compiled once.
    """
    second = jax.vmap(jax.grad(jax.grad(lambda x: activation(x))))
    mutable = [PREACTIVATIONS, "batch_stats"] if train else [PREACTIVATIONS]

    @jax.jit
    def counts(variables, inputs):
        _, state = model.apply(variables, inputs, train=train, mutable=mutable)
        flat = traverse_util.flatten_dict(state[PREACTIVATIONS], sep="/")
        out = {}
        for path, values in flat.items():
            for i, x in enumerate(values):
                d2 = second(x.reshape(-1).astype(jnp.float32))
                unit_max = jnp.max(x.reshape(-1, x.shape[-1]), axis=0)  # per feature/channel
                out[f"{path}/{i}"] = (jnp.sum(jnp.abs(d2) > threshold), x.size, unit_max)
        return out

    def probe(variables: dict, batches: Sequence[dict]
              ) -> tuple[dict[str, float], dict[str, float]]:
        totals: dict[str, list[float]] = {}
        peaks: dict[str, np.ndarray] = {}
        for batch in batches:
            for site, (above, size, unit_max) in jax.device_get(
                    counts(variables, batch["inputs"])).items():
                acc = totals.setdefault(site, [0.0, 0.0])
                acc[0] += float(above)
                acc[1] += float(size)
                peaks[site] = np.maximum(peaks.get(site, -np.inf), unit_max)
        sparsity = {site: above / size for site, (above, size) in sorted(totals.items())}
        dead = {site: float(np.mean(peak <= 0)) for site, peak in sorted(peaks.items())}
        return sparsity, dead

    return probe
