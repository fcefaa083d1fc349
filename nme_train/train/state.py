"""The train state: everything a step reads and writes, in one pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    """Parameters, optimizer state, model state (BatchNorm statistics), step and RNG.

    `rng` is the run's base key; the key of step t is fold_in(rng, t), so a
    resumed run draws exactly what an uninterrupted one would.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    model_state: Any
    rng: jax.Array
