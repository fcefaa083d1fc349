"""Sharpness-aware minimisation (Foret et al., 2021) as an objective transform.

    eps = rho * g / ||g||,  g = grad L(theta) on the batch;  update: grad L(theta + eps)

The objective's value is L(theta + stop_gradient(eps)), so its gradient is
SAM's update. `adaptive=True` is ASAM (Kwon et al., 2021): with T = |theta|
+ eta, eps = rho * T^2 g / ||T g||.

m-sharpness (`m`): the batch is cut into groups of m consecutive examples;
each group gets its own perturbation from its own gradient and contributes
the gradient of its loss at its own perturbed point; the update is the mean
over groups. Groups are formed from the global batch, so the result depends
on m only, not on how many devices hold the batch. The reference SAM code
perturbs each device's shard separately (its default, sync_perturbations
False): that is m = per-device batch here. `m=None` (one perturbation for
the whole batch) is SAM with synchronised perturbations. Within groups,
BatchNorm statistics are computed per group, as on the reference code's
devices; the kept model state is the mean of the groups' clean-pass states.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax.tree_utils as otu

from nme_train.regularizers.accumulation import accumulated_value_and_grad
from nme_train.regularizers.objective import Objective, Transform, add_metrics
from nme_train.regularizers.registry import register_regularizer


def _ascent(grads, params, rho: float, adaptive: bool, eta: float):
    """The perturbation eps (stop-gradient'ed) and ||g|| (or ||T g|| for ASAM)."""
    if adaptive:
        scale = jax.tree.map(lambda p: jnp.abs(p) + eta, params)
        tg = jax.tree.map(lambda s, g: s * g, scale, grads)
        norm = otu.tree_norm(tg)
        eps = jax.tree.map(lambda s, x: rho * s * x / (norm + 1e-12), scale, tg)
    else:
        norm = otu.tree_norm(grads)
        eps = jax.tree.map(lambda g: rho * g / (norm + 1e-12), grads)
    return jax.lax.stop_gradient(eps), norm


def _group(batch: dict, m: int) -> dict:
    """[B, ...] -> [B / m, m, ...] for every array of the batch."""
    def split(x):
        if x.shape[0] % m:
            raise ValueError(f"sam: m={m} does not divide the batch of {x.shape[0]} examples")
        return x.reshape((x.shape[0] // m, m, *x.shape[1:]))

    return jax.tree.map(split, batch)


def sam(rho: float, adaptive: bool = False, m: int | None = None, eta: float = 0.01) -> Transform:
    """SAM with radius `rho`; ASAM with `adaptive=True`; m-sharpness with groups of `m`."""
    if rho < 0:
        raise ValueError(f"sam: rho={rho} must be >= 0")
    if m is not None and m <= 0:
        raise ValueError(f"sam: m={m} must be a positive number of examples (or None)")

    def transform(obj: Objective) -> Objective:
        clean = jax.value_and_grad(obj.value, has_aux=True)

        def one_group(params, batch, rng):
            (loss, aux), grads = clean(params, batch, rng)
            eps, norm = _ascent(grads, params, rho, adaptive, eta)
            adv_loss, adv_aux = obj(otu.tree_add(params, eps), batch, rng)
            return adv_loss, aux, loss, norm, adv_aux

        def value(params, batch, rng):
            if m is None:
                adv_loss, aux, loss, norm, _ = one_group(params, batch, rng)
            else:
                groups = _group(batch, m)
                per_group = jax.vmap(one_group, in_axes=(None, 0, None))(params, groups, rng)
                adv_loss, aux, loss, norm, _ = per_group
                adv_loss, loss, norm = jnp.mean(adv_loss), jnp.mean(loss), jnp.mean(norm)
                aux = {
                    "metrics": jax.tree.map(jnp.mean, aux["metrics"]),
                    "outputs": jax.tree.map(
                        lambda x: x.reshape((-1, *x.shape[2:])), aux["outputs"]),
                    "state": jax.tree.map(lambda x: jnp.mean(x, axis=0), aux["state"]),
                }
            return adv_loss, add_metrics(
                aux, **{"sam/clean_loss": loss, "sam/perturbed_loss": adv_loss,
                        "sam/grad_norm": norm})

        def accumulate(params, microbatches, rng):
            """One perturbation from the whole batch's gradient (two passes)."""
            (loss, aux), grads = accumulated_value_and_grad(obj, params, microbatches, rng)
            eps, norm = _ascent(grads, params, rho, adaptive, eta)
            (adv_loss, _), adv_grads = accumulated_value_and_grad(
                obj, otu.tree_add(params, eps), microbatches, rng)
            return (adv_loss, add_metrics(
                aux, **{"sam/clean_loss": loss, "sam/perturbed_loss": adv_loss,
                        "sam/grad_norm": norm})), adv_grads

        # m-sharpness: its groups lie inside a microbatch, whose mean is then exact
        return obj.with_value(value, accumulate if m is None else None)

    return transform


def check_sam(kwargs: dict, config, num_devices: int) -> list[str]:
    """m-sharpness needs groups that tile each device's part of the batch (of each
    microbatch, with gradient accumulation)."""
    m, k = kwargs.get("m"), config.get("grad_accum_steps", 1)
    if not m or not isinstance(config.batch_size, int) or not isinstance(k, int) or k < 1:
        return []
    per_device = config.batch_size // max(num_devices, 1) // k
    if per_device % m == 0:
        return []
    divisors = [d for d in range(1, per_device + 1) if per_device % d == 0]
    where = f" of each of the {k} microbatches" if k > 1 else ""
    return [f"sam m={m} does not divide the per-device batch{where} of {per_device} "
            f"(config.batch_size={config.batch_size} over {num_devices} devices); use one of "
            f"{divisors}"]


register_regularizer("sam", sam, check_sam, example={"rho": 0.05})
