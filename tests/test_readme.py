"""The documentation's Python examples run as written: the README's regularizer example,
docs/curvature.md's Lanczos example (its NME is indefinite and converged), and the four
recipes of docs/extending.md (each registers what it adds, which then works through the
validator, the trainer's builders and the probe suite)."""

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


@pytest.fixture
def registries():
    """The registries as they were: the extension recipes register in this process."""
    from nme_train.curvature.figures import FIGURES
    from nme_train.curvature.operators import OPERATORS
    from nme_train.data import DATASETS
    from nme_train.models import MODELS
    from nme_train.regularizers import REGISTRY

    tables = (FIGURES, OPERATORS, DATASETS, MODELS, REGISTRY)
    saved = [list(t) if isinstance(t, list) else dict(t) for t in tables]
    yield
    for table, copy in zip(tables, saved):
        if isinstance(table, list):
            table[:] = copy
        else:
            table.clear()
            table.update(copy)


def extending_block(marker: str) -> dict:
    """Runs the docs/extending.md block containing `marker`; returns its namespace."""
    text = open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b)
    namespace: dict = {}
    exec(compile(block, "docs/extending.md", "exec"), namespace)
    return namespace


@pytest.mark.usefixtures("registries")
def test_extending_recipes_run_and_register_what_they_add():
    ns = extending_block("def logit_penalty")
    assert float(ns["aux"]["metrics"]["logit_penalty"]) == pytest.approx(9.0)  # (1+1+1)^2
    assert ns["grads"]["w"].shape == (3, 2)

    ns = extending_block('register_model("linear"')
    assert ns["problems"] == ["config.model.batch_norm=True: the linear model has no "
                              "BatchNorm; set it to False"]
    assert ns["logits"].shape == (2, 10)

    ns = extending_block('DATASETS["stripes"]')
    batch = ns["batch"]
    assert batch["image"].shape == (16, 8, 8, 1) and set(batch["label"]) <= {0, 1}
    # the label is what the stripes say: vertical stripes (label 1) alternate along a row
    rows_alternate = (batch["image"][:, 0, 0, 0] != batch["image"][:, 0, 1, 0])
    assert np.array_equal(rows_alternate, batch["label"] == 1)

    ns = extending_block("def spectral_gap")
    record = ns["record"]
    assert ns["shift"] == pytest.approx(0.1, rel=1e-4)
    for kind in ("gauss_newton", "damped_gauss_newton", "fisher"):
        top = record[f"{kind}/top_eigenvalues"]
        assert record[f"{kind}/spectral_gap"] == pytest.approx(top[0] - top[1])
        assert f"{kind}/trace" in record and f"{kind}/alignment" in record
    # the new kind and figure reach the console line and TensorBoard's scalars
    from nme_train.curvature.probes import scalars
    from nme_train.train.probing import summary

    assert "G+0.1I top" in summary(record) and "F top" in summary(record)
    assert "probes/damped_gauss_newton/spectral_gap" in scalars(record)
