"""Command-line errors: one `error:` line naming the field or file and the fix.

A user's mistake (a missing config file, an unknown field, a bad value, a
workdir that cannot be used, a diverged run) ends the command with one line
on stderr and exit status 1; `--debug` shows the traceback instead. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from nme_train.config_fields import leaf_fields, unknown_field

DEBUG_FLAG = "--debug"


def _config_arg(argv: Sequence[str]) -> str | None:
    """The --config value absl will use: the last one given (a script may append another
    --config to a base command), up to a "--" that ends the flags."""
    found = None
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg.startswith("--config="):
            found = arg.split("=", 1)[1]
        elif arg == "--config" and i + 1 < len(argv):
            found = argv[i + 1]
    return found


def _overrides(argv: Sequence[str]) -> list[str]:
    return [m.group(1) for arg in argv if (m := re.match(r"--config\.([\w.]+)(=|$)", arg))]


# The source checkout holding this package (an editable install): configs/, tools/, launch/.
CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_config_module(path: str, flag: str = "--config", name: str = "_nme_config",
                         needs_get_config: bool = True):
    """The Python module of a config file; ValueError with one clear line when it fails."""
    if not os.path.isfile(path):
        raise ValueError(f"{flag}: no such file {path!r}; give a config file with "
                         "get_config(), e.g. --config=configs/default.py")
    _importable_from(path)
    try:
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"{flag}: {path} line {e.lineno}: SyntaxError: {e.msg}; "
                         "fix the file") from e
    except Exception as e:
        raise ValueError(f"{flag}: importing {path} failed: {type(e).__name__}: {e}") from e
    if needs_get_config and not hasattr(module, "get_config"):
        raise ValueError(f"{flag}: {path} defines no get_config()")
    return module


def _importable_from(path: str) -> None:
    """Puts the folder above the package tree holding `path` on sys.path, so a config file
    in configs/paper/ can import its siblings (`from configs.paper import common`) from
    any working directory; configs/ is part of the checkout, not of the installed package.
    A config file elsewhere gets the checkout's configs/ (its recipes) the same way."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(os.path.join(folder, "__init__.py")):
        while os.path.exists(os.path.join(folder, "__init__.py")):
            folder = os.path.dirname(folder)
    elif os.path.isdir(os.path.join(CHECKOUT, "configs")):
        folder = CHECKOUT
    else:
        return
    if folder not in sys.path:
        sys.path.append(folder)


def load_config_file(spec: str) -> Any:
    """get_config(arg) of `file.py[:arg]`; ValueError with one clear line when it fails."""
    path, _, arg = spec.partition(":")
    module = import_config_module(path, f"--config={spec}")
    try:
        return module.get_config(arg) if arg else module.get_config()
    except Exception as e:
        variants = getattr(module, "VARIANTS", None) or getattr(module, "SCALES", None)
        known = (f"; its variants are {', '.join(map(str, variants))}"
                 if variants and isinstance(e, KeyError) else "")
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"--config={spec}: get_config({arg!r}) failed: "
                         f"{type(e).__name__}: {detail}{known}") from e


def diagnose_config_flags(argv: Sequence[str]) -> str | None:
    """The one-line reason why the --config flags of `argv` cannot load, or None."""
    spec = _config_arg(argv)
    if spec is None:
        return None
    try:
        config = load_config_file(spec)
    except ValueError as e:
        return str(e)
    fields = leaf_fields(config)
    for name in _overrides(argv):
        if name not in fields:
            return f"--config.{name}: " + unknown_field(name, fields)
    return None


def run_with_errors(main: Callable[[], Any], user_errors: tuple[type[BaseException], ...],
                    argv: Sequence[str] | None = None, prefix: str = "") -> Any:
    """Runs `main`; a user error becomes one `error:` line and exit 1 (unless --debug)."""
    argv = sys.argv if argv is None else argv
    try:
        return main()
    except user_errors as e:
        if DEBUG_FLAG in argv:
            raise
        message = str(e).strip() or type(e).__name__
        sys.stderr.write(f"{prefix}error: {message}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        # Everything the command opened was closed where the error was raised (the trainer's
        # `finally`, the probe tool's snapshot cleanup); skipping the interpreter's teardown
        # keeps tensorstore's threads from printing "Event loop is closed" tracebacks after
        # this line, or changing the exit status when they race it on a loaded machine.
        os._exit(1)


def checkout_module(relative_path: str):
    """The module of a file of the checkout (e.g. "configs/paper/common.py"), by its path:
    for the scripts in tools/, which run from a source checkout."""
    name = "_checkout_" + os.path.splitext(relative_path)[0].replace("/", "_")
    return import_config_module(os.path.join(CHECKOUT, relative_path), "checkout", name,
                                needs_get_config=False)
