"""The package's layering: dependencies point down, one home for each helper."""

import ast
import pathlib

from conftest import ROOT

PACKAGE = pathlib.Path(ROOT) / "nme_train"

# package -> the project packages it must not import (directly or lazily)
LOW = ("experiments", "validation", "commands")  # nothing below them imports these
FORBIDDEN = {
    "curvature": ("models", "train", "regularizers", "data") + LOW,
    "models": ("curvature", "train", "regularizers", "data") + LOW,
    "regularizers": ("models", "train", "data") + LOW,
    "data": ("models", "curvature", "train", "regularizers") + LOW,
    "train": ("experiments", "main", "cli", "commands"),
    "validation": ("train", "experiments", "main", "cli", "commands"),
    "optim": ("train", "validation", "commands"),
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
    assert [f.name for f in FIGURES][:5] == ["gradient", "lanczos", "trace", "alignment",
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


def test_commands_live_in_the_package_and_tools_are_front_ends():
    """Each tools/<name>.py only runs nme_train.commands.<name>.main, which is also its
    console script; installing the project makes neither `tools` nor `configs` importable."""
    import tomllib

    tools = sorted(pathlib.Path(ROOT, "tools").glob("*.py"))
    commands = sorted(p.stem for p in (PACKAGE / "commands").glob("*.py") if p.stem != "__init__")
    assert [p.stem for p in tools] == commands
    for path in tools:
        imports = [n for n in ast.walk(ast.parse(path.read_text()))
                   if isinstance(n, (ast.Import, ast.ImportFrom))]
        assert {getattr(n, "module", None) for n in imports} == {
            None, f"nme_train.commands.{path.stem}"}, path.name
        assert len(path.read_text().splitlines()) <= 15, path.name
    project = tomllib.loads(pathlib.Path(ROOT, "pyproject.toml").read_text())
    scripts = project["project"]["scripts"]
    for name in commands:
        assert scripts[f"nme-{name.replace('_', '-')}"] == f"nme_train.commands.{name}:main"
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["nme_train*"]
