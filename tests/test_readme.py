"""The README's regularizer example runs as written."""

import os
import re

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_regularizer_example_runs():
    text = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "reg.objective(apply_fn, loss_fn)" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)  # noqa: S102
    metrics = namespace["aux"]["metrics"]
    assert np.isfinite(float(metrics["sam/grad_norm"]))
    grads = namespace["grads"]
    assert set(grads) == {"w1", "b1", "w2", "b2"}
