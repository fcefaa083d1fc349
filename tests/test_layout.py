"""The package's layering: dependencies point down, one home for each helper."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "nme_train"

# package -> the project packages it must not import (directly or lazily)
FORBIDDEN = {
    "curvature": ("models", "train", "regularizers", "data", "experiments", "validation"),
    "models": ("curvature", "train", "regularizers", "data", "experiments", "validation"),
    "regularizers": ("models", "train", "data", "experiments", "validation"),
    "data": ("models", "curvature", "train", "regularizers", "experiments", "validation"),
    "train": ("experiments", "main", "cli"),
    "validation": ("train", "experiments", "main", "cli"),
    "optim": ("train", "validation"),
}


def project_imports(path: pathlib.Path) -> set[str]:
    """The nme_train subpackages/modules `path` imports: nme_train.X... -> X."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            if name.startswith("nme_train."):
                found.add(name.split(".")[1])
    return found


def test_dependencies_point_down():
    problems = []
    for unit, forbidden in FORBIDDEN.items():
        files = (sorted((PACKAGE / unit).rglob("*.py")) if (PACKAGE / unit).is_dir()
                 else [PACKAGE / f"{unit}.py"])
        assert files, unit
        for path in files:
            bad = project_imports(path) & set(forbidden)
            if bad:
                problems.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert not problems, "\n".join(problems)


def test_no_helper_is_defined_twice():
    """Module-level functions of the package have distinct names (a second definition of a
    helper is a second home); methods and the `main`/`get_config` entry points excepted."""
    seen: dict[str, str] = {}
    twice = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name not in ("main", "get_config"):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                if node.name in seen:
                    twice.append(f"{node.name}: {seen[node.name]} and {where}")
                seen.setdefault(node.name, where)
    assert not twice, "\n".join(twice)
