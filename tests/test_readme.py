"""The documentation's Python examples run as written: the regularizer example of
docs/regularizers.md, docs/curvature.md's Lanczos example (its NME is indefinite and
converged), and docs/extending.md's dataset recipe (its worked example of a model, a
regularizer, an operator kind and a probe figure: tests/test_extending.py)."""

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
    from nme_train.models.activations import ACTIVATIONS
    from nme_train.optim import OPTIMIZERS
    from nme_train.regularizers import REGULARIZERS

    tables = (FIGURES, OPERATORS, DATASETS, MODELS, ACTIVATIONS, OPTIMIZERS, REGULARIZERS)
    saved = [t.snapshot() for t in tables]
    yield
    for table, copy in zip(tables, saved):
        table.restore(copy)


def extending_block(marker: str) -> dict:
    """Runs the docs/extending.md block containing `marker`; returns its namespace."""
    text = open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8").read()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b)
    namespace: dict = {}
    exec(compile(block, "docs/extending.md", "exec"), namespace)
    return namespace


@pytest.mark.usefixtures("registries")
def test_extending_dataset_recipe_registers_and_reads_its_dataset():
    """docs/extending.md's dataset recipe (its worked example of the other components
    runs in tests/test_extending.py, from outside the package)."""
    ns = extending_block('register_dataset("stripes"')
    batch = ns["batch"]
    assert batch["image"].shape == (16, 8, 8, 1) and set(batch["label"]) <= {0, 1}
    # the label is what the stripes say: vertical stripes (label 1) alternate along a row
    rows_alternate = (batch["image"][:, 0, 0, 0] != batch["image"][:, 0, 1, 0])
    assert np.array_equal(rows_alternate, batch["label"] == 1)



def test_no_document_or_docstring_names_a_file_that_does_not_exist():
    """Links and paths in the README, docs/*.md and the package's and tools' source (e.g.
    `docs/results.md`, `tools/bench_step.py`, `nme_train/models/layers.py`) all exist."""
    import glob

    sources = ([os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "*.md"))
               + glob.glob(os.path.join(ROOT, "nme_train", "**", "*.py"), recursive=True)
               + glob.glob(os.path.join(ROOT, "tools", "*.py"))
               + glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True))
    pattern = re.compile(r"(?<![\w./-])((?:docs|tools|configs|launch|tests|nme_train)/"
                         r"[\w./-]*\w\.(?:md|py|sh|yaml|sbatch))")
    missing = []
    for source in sources:
        text = open(source, encoding="utf-8").read()
        here = os.path.dirname(source)
        for target in set(pattern.findall(text)):
            if "eN." in target:  # a pattern: configs/paper/eN.py means e1.py ... e10.py
                continue
            if not os.path.exists(os.path.join(ROOT, target)):
                missing.append(f"{os.path.relpath(source, ROOT)}: {target}")
        if source.endswith(".md"):  # relative links of the documents
            for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
                if not os.path.exists(os.path.join(here, link)):
                    missing.append(f"{os.path.relpath(source, ROOT)}: ({link})")
    assert not missing, "\n".join(sorted(missing))
