"""nme_train: a JAX training framework for sharpness-regularization research.

The package trains image classifiers with a sharded `jax.jit` trainer and is
organised so that loss transforms (regularizers) and curvature probes act on
the same plain functions: `apply_fn(params, inputs)` and
`loss_fn(outputs, targets)`.
"""

__version__ = "0.1.0"
