"""The documentation's regularizer and curvature examples run as written, and the
README's command line is a valid config."""

import os
import re

import numpy as np
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def python_blocks():
    """The ```python blocks of the README and of docs/*.md."""
    paths = [os.path.join(ROOT, "README.md")] + sorted(
        os.path.join(ROOT, "docs", n) for n in os.listdir(os.path.join(ROOT, "docs"))
        if n.endswith(".md"))
    text = "".join(open(p, encoding="utf-8").read() for p in paths)
    return re.findall(r"```python\n(.*?)```", text, re.S)


def test_readme_regularizer_example_runs():
    blocks = python_blocks()
    example = next(b for b in blocks if "reg.objective(apply_fn, loss_fn)" in b)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    metrics = namespace["aux"]["metrics"]
    assert np.isfinite(float(metrics["sam/grad_norm"]))
    grads = namespace["grads"]
    assert set(grads) == {"w1", "b1", "w2", "b2"}


def test_readme_curvature_example_runs():
    blocks = python_blocks()
    namespace: dict = {}
    for marker in ("reg.objective(apply_fn, loss_fn)", "cv.Curvature(apply_fn"):
        example = next(b for b in blocks if marker in b)
        exec(compile(example, "README.md", "exec"), namespace)
    top, top_bounds = namespace["result"].top(3)
    bottom, _ = namespace["result"].bottom(3)
    assert np.all(np.isfinite(top)) and top[0] >= top[1] >= top[2]
    assert bottom[0] < 0 < top[0]  # the NME is indefinite
    assert top_bounds[0] < 1e-2 * abs(top[0])  # converged within 30 steps
