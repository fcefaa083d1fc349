"""Curvature of the loss: H, its Gauss-Newton part G, the NME and the Fisher, matrix-free.

    curv = Curvature(apply_fn, softmax_cross_entropy())
    matvec = curv.operator("nme", params, batches)        # v -> NME v (inside jit)
    alphas, betas, basis = lanczos(matvec, v0, 20)        # jittable
    LanczosResult(alphas, betas).top(5)                   # Ritz values, error bounds

    linear = jax.jit(curv.linear_operator, static_argnums=0)("nme", params, batches)
    lanczos_iterate(linear, v0, 20).top(5)                # stepwise: fastest on CPU

See operators.py (the products; OPERATORS, register_operator), lanczos.py,
estimators.py (Hutchinson traces with shared probes, stochastic Lanczos
quadrature), figures.py (what a probe computes; FIGURES, register_figure)
and probes.py (the probe suite the trainer and nme-probe run).
"""

from nme_train.curvature.estimators import (
    hutchinson_quadratic_forms,
    leaf_paths,
    leafwise_dots,
    mean_and_standard_error,
    rademacher_like,
    slq_nodes_and_weights,
    spectral_density,
)
from nme_train.curvature.figures import FIGURES, Figure, ProbeContext, register_figure
from nme_train.curvature.lanczos import (
    LanczosResult,
    apply,
    lanczos,
    lanczos_host,
    lanczos_iterate,
)
from nme_train.curvature.losses import (
    OutputLoss,
    as_output_loss,
    mean_squared_error,
    softmax_cross_entropy,
)
from nme_train.curvature.operators import (
    KINDS,
    OPERATORS,
    Curvature,
    OperatorKind,
    batch_weights,
    check_deterministic,
    kind_label,
    register_operator,
)
from nme_train.curvature.products import (
    gvp,
    hvp,
    nme_vp,
    output_hvp,
)

__all__ = [
    "Curvature", "FIGURES", "Figure", "KINDS", "LanczosResult", "OPERATORS", "OperatorKind",
    "OutputLoss", "ProbeContext", "apply", "as_output_loss", "batch_weights",
    "check_deterministic", "gvp", "hutchinson_quadratic_forms", "hvp", "kind_label", "lanczos",
    "lanczos_host", "lanczos_iterate", "leaf_paths", "leafwise_dots",
    "mean_and_standard_error", "mean_squared_error", "nme_vp", "output_hvp", "rademacher_like",
    "register_figure", "register_operator", "slq_nodes_and_weights", "softmax_cross_entropy",
    "spectral_density",
]
