"""Planning a sweep: the experiment file's grid, which points are finished, the manifest.

An experiment file (configs/paper/eN.py) defines SCALES, base(scale), grid(scale) and PLOT
(nme_train.sweeps.grids); point P of it runs in DIR/P. A point whose DIR/P/final.json or
diverged.json exists is finished (a diverged run is a result of the grid); one whose
DIR/P/config.json differs from the config it would run now is refused. The manifest
DIR/sweep_<experiment>.json lists the points and plot settings for
nme_train.analysis, and DIR/P/point.json each point's tags and config string.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from nme_train import storage
from nme_train.cli import CHECKOUT, import_config_module
from nme_train.extensions import import_modules
from nme_train.sweeps.grids import POINT_FILE, Point, apply_overrides, check_grid
from nme_train.train.rundir import (
    config_changes,
    read_diverged,
    read_final,
    read_json,
    write_json_atomic,
)

REPO = CHECKOUT  # runs start here: their config paths are relative to the checkout


class SweepError(Exception):
    pass


def load_experiment(config_arg: str):
    """(module, scale, config path) of `path.py[:SCALE]`; the module's default scale if none."""
    path, _, scale = config_arg.partition(":")
    if not os.path.isfile(path):
        raise SweepError(f"--config {config_arg!r}: no such file {path!r}; give an "
                         "experiment file, e.g. configs/paper/e1.py:study")
    absolute = os.path.abspath(path)  # runs start in the checkout: name the file from there
    path = (os.path.relpath(absolute, REPO)
            if os.path.commonpath([absolute, REPO]) == REPO else absolute)
    name = os.path.splitext(os.path.basename(path))[0]
    module = import_config_module(absolute, f"--config {config_arg!r}", f"_experiment_{name}")
    if not hasattr(module, "grid"):
        raise SweepError(f"{path} defines no grid(scale): it is not a sweep (E7 is drawn by "
                         "tools/toy_landscape.py)")
    if not scale:
        scale = module.get_config.__defaults__[0]
    if scale not in module.SCALES:
        raise SweepError(f"--config {config_arg!r}: unknown scale {scale!r}; choose one of "
                         f"{tuple(module.SCALES)}")
    try:  # the components a user's module registers (config.modules), before planning
        import_modules(module.base(scale).get("modules", ()))
    except ValueError as e:
        raise SweepError(f"--config {config_arg!r}: {e}") from None
    return module, scale, path


def experiment_name(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def expand(module, scale: str) -> list[Point]:
    points = module.grid(scale)
    check_grid(points)
    return points


def point_config_json(module, scale: str, point: Point) -> dict:
    config = apply_overrides(module.base(scale), point.overrides)
    return json.loads(config.to_json_best_effort())


def plan(module, scale: str, path: str, workdir: str) -> tuple[list[Point], list[Point]]:
    """(finished, pending) points; raises SweepError on a run whose config changed."""
    finished, pending, conflicts = [], [], []
    for point in expand(module, scale):
        run_dir = os.path.join(workdir, point.name)
        existing = read_json(os.path.join(run_dir, "config.json"))
        if existing and config_changes(existing, point_config_json(module, scale, point)):
            conflicts.append(run_dir)
            continue
        done = read_final(run_dir) is not None or read_diverged(run_dir) is not None
        (finished if done else pending).append(point)
    if conflicts:
        raise SweepError(f"{len(conflicts)} run(s) in {workdir} were started with another "
                         f"config than {path}:{scale} gives them now (e.g. {conflicts[0]}); "
                         "sweep into a new --workdir or remove those runs")
    # every seed-0 point first, then seed 1, ...: a sweep cut short still covers the grid
    pending.sort(key=lambda p: p.tag_dict.get("seed", 0))
    return finished, pending


def plot_settings(module, scale: str) -> dict:
    """The experiment's PLOT, with the keys of PLOT["scales"][scale] (if any) replacing
    its own: e.g. a scale whose runs carry more probes shows more series."""
    plot = dict(getattr(module, "PLOT", {"kind": "final"}))
    own = plot.pop("scales", {}).get(scale, {})
    return {**plot, **own}


def write_manifest(module, scale: str, path: str, workdir: str, points: Sequence[Point]) -> str:
    storage.makedirs(workdir)
    name = experiment_name(path)
    manifest = os.path.join(workdir, f"sweep_{name}.json")
    write_json_atomic(manifest, {
        "experiment": name, "config": path, "scale": scale,
        "plot": plot_settings(module, scale),
        "points": [{"name": p.name, "tags": p.tag_dict} for p in points],
    })
    for p in points:
        storage.makedirs(os.path.join(workdir, p.name))
        write_json_atomic(os.path.join(workdir, p.name, POINT_FILE),
                          {"tags": p.tag_dict, "config": f"{path}:{scale}/{p.name}"})
    return manifest
