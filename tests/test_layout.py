"""The package's layering: dependencies point down, one home for each helper."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "nme_train"

# package -> the project packages it must not import (directly or lazily)
# nothing below them imports these
LOW = ("sweeps", "analysis", "validation", "commands")
FORBIDDEN = {
    "curvature": ("models", "train", "regularizers", "data") + LOW,
    "models": ("curvature", "train", "regularizers", "data") + LOW,
    "regularizers": ("models", "train", "data") + LOW,
    "data": ("models", "curvature", "train", "regularizers") + LOW,
    "train": ("sweeps", "analysis", "main", "cli", "commands"),
    "validation": ("train", "sweeps", "analysis", "main", "cli", "commands"),
    "optim": ("train", "validation", "commands"),
    "sweeps": ("analysis", "commands", "main"),
    "analysis": ("sweeps.launch", "commands", "main"),
}


def project_imports(path: pathlib.Path) -> set[str]:
    """The nme_train subpackages/modules `path` imports: nme_train.X... -> X."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                 else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        for name in names:
            if name.startswith("nme_train."):
                parts = name.split(".")
                found.update({parts[1], ".".join(parts[1:3])})
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


def string_literals(path: pathlib.Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_components_are_found_through_their_registries():
    """The validator asks the model registry, not the architecture modules; the trainer's
    probe output, TensorBoard, the summaries and the plots name no operator kind by hand
    (they iterate over OPERATORS and FIGURES), so a new kind or figure reaches them all."""
    from nme_train.curvature.figures import FIGURES
    from nme_train.curvature.operators import OPERATORS
    from nme_train.models import MODELS

    tree = ast.parse((PACKAGE / "validation.py").read_text())
    modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    architectures = {f"nme_train.models.{name}" for name in MODELS}
    assert not modules & architectures, sorted(modules & architectures)
    assert {"hessian", "gauss_newton", "nme", "fisher"} <= set(OPERATORS)
    assert list(FIGURES)[:5] == ["gradient", "lanczos", "trace", "alignment",
                                             "density"]
    readers = [PACKAGE / "train" / n for n in ("probing.py", "metrics.py", "loop.py",
                                                "offline.py")] + [
        PACKAGE / "commands" / n for n in ("plot_curvature.py", "summarize.py", "probe.py")]
    named = {str(p.relative_to(ROOT)): sorted(string_literals(p) & set(OPERATORS))
             for p in readers}
    assert not any(named.values()), named
    # each model module registers itself and its checks, and the package imports it
    for name, entry in MODELS.items():
        assert (PACKAGE / "models" / f"{name}.py").exists(), name
        assert entry.check.__module__ == f"nme_train.models.{name}", name


def test_one_front_door_per_command_and_tools_are_scripts():
    """The user's commands are thin modules of nme_train/commands, each an installed console
    script (and `python -m`); no command imports another or holds library code (about 100
    lines at most); tools/ holds real scripts (benchmarks, checks), no front end of a
    command; installing the project makes neither `tools` nor `configs` importable."""
    import tomllib

    commands = sorted(p.stem for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__")
    assert commands == ["plot_curvature", "prepare_data", "probe", "profile", "summarize", "sweep"]
    project = tomllib.loads(pathlib.Path(ROOT, "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    assert scripts == {"nme-train": "nme_train.main:run",
                       **{f"nme-{n.replace('_', '-')}": f"nme_train.commands.{n}:main"
                          for n in commands}}
    for name in commands:
        path = PACKAGE / "commands" / f"{name}.py"
        assert len(path.read_text().splitlines()) <= 110, name
        assert "commands" not in project_imports(path), name
        assert 'if __name__ == "__main__":' in path.read_text(), name  # python -m
    for path in sorted(pathlib.Path(ROOT, "tools").glob("*.py")):
        assert path.stem not in commands, path.name
        imports = {getattr(n, "module", None) or "" for n in ast.walk(ast.parse(
            path.read_text())) if isinstance(n, (ast.Import, ast.ImportFrom))}
        assert not any(m.startswith("nme_train.commands") for m in imports), path.name
        assert 'if __name__ == "__main__":' in path.read_text(), path.name
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["nme_train*"]
