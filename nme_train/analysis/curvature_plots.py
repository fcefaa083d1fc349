"""A run's curvature probes as figures (docs/curvature.md): the figures nme-plot-curvature
writes, from the records of nme_train.train.probing (probes.jsonl, probes_offline.jsonl).

  curvature_spectra.png   top eigenvalue of each probed operator (H, G, NME, F, the NME's
                          parts) and the bottom one of the indefinite ones, over training,
                          with the Ritz error bounds
  curvature_traces.png    the traces over training (+- 2 standard errors)
  curvature_layers.png    the trace of each layer's diagonal block over training
                          (`<kind>/trace_by_layer`, summed over the layer's parameters)
  curvature_density.png   the spectral densities (SLQ) of the last probe that has them
  activation_sparsity.png mean fraction of |sigma''| above the threshold over training
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from nme_train import storage
from nme_train.curvature.operators import OPERATORS


def kinds_of(records) -> list[tuple[str, str, str]]:
    """(kind, label, colour) of each operator kind the records hold, in registry order."""
    held = {key.split("/", 1)[0] for r in records for key in r if "/" in key}
    return [(kind, op.label, f"C{i}") for i, (kind, op) in enumerate(OPERATORS.items())
            if kind in held]


def read_records(workdir: str) -> list[dict]:
    """The run's probe records and those of nme-probe, by step."""
    from nme_train.train.probing import read_probes

    records = read_probes(workdir) + read_probes(workdir, "probes_offline.jsonl")
    return sorted(records, key=lambda r: (r["step"], r.get("source", "")))


def _series(records, key, index=0):
    pts = [(r["step"], r[key][index] if isinstance(r[key], list) else r[key])
           for r in records if r.get(key) not in (None, [])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_spectra(records, path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for kind, label, color in kinds_of(records):
        for end, style in (("top", "-"), ("bottom", "--")):
            if end == "bottom" and OPERATORS[kind].psd:
                continue
            steps, values = _series(records, f"{kind}/{end}_eigenvalues")
            if not steps:
                continue
            _, bounds = _series(records, f"{kind}/{end}_error_bounds")
            ax.plot(steps, values, style, color=color, marker="o", ms=3,
                    label=f"{label} {'largest' if end == 'top' else 'smallest'} eigenvalue")
            if len(bounds) == len(values):
                ax.fill_between(steps, [v - b for v, b in zip(values, bounds)],
                                [v + b for v, b in zip(values, bounds)], color=color, alpha=0.2)
            drawn = True
    return _save_over_steps(fig, ax, drawn, path, "eigenvalue",
                            "Extreme eigenvalues (Lanczos; H = G + NME)")


def plot_traces(records, path) -> bool:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for kind, label, color in kinds_of(records):
        steps, values = _series(records, f"{kind}/trace")
        if not steps:
            continue
        _, se = _series(records, f"{kind}/trace_se")
        ax.errorbar(steps, values, yerr=[2 * s for s in se], color=color, marker="o", ms=3,
                    capsize=2, label=f"tr {label}")
        drawn = True
    return _save_over_steps(fig, ax, drawn, path, "trace (Hutchinson, ±2 SE)",
                            "tr H = tr G + tr NME over training")


def plot_layers(records, path) -> bool:
    """One panel per kind: the trace of each layer's diagonal block over training."""
    kinds = [k for k in kinds_of(records)
             if any(f"{k[0]}/trace_by_layer" in r for r in records)]
    if not kinds:
        return False
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4.5), squeeze=False)
    for ax, (kind, label, _) in zip(axes[0], kinds):
        per_layer: dict[str, list[tuple[int, float]]] = {}
        for r in records:
            sums: dict[str, float] = {}
            for path_, value in r.get(f"{kind}/trace_by_layer", {}).items():
                layer = path_.rsplit("/", 1)[0]
                sums[layer] = sums.get(layer, 0.0) + value
            for layer, value in sums.items():
                per_layer.setdefault(layer, []).append((r["step"], value))
        for layer, points in sorted(per_layer.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3,
                    label=layer)
        ax.set_yscale("symlog", linthresh=1.0)
        _finish(ax, "trace of the layer's block (Hutchinson)", f"tr {label} by layer")
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


def _finish(ax, ylabel: str, title: str) -> None:
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="training step", ylabel=ylabel, title=title)
    ax.legend(fontsize=8)


def _save_over_steps(fig, ax, drawn: bool, path: str, ylabel: str, title: str) -> bool:
    """Finishes a figure of values over training steps; saves it only when it has data."""
    if drawn:
        _finish(ax, ylabel, title)
        fig.tight_layout()
        storage.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return drawn


def plot_density(records, path) -> bool:
    kinds = kinds_of(records)
    last = next((r for r in reversed(records)
                 if any(f"{k}/density" in r for k, _, _ in kinds)), None)
    if last is None:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, label, color in kinds:
        d = last.get(f"{kind}/density")
        if d:
            ax.plot(d["grid"], d["density"], color=color, label=label)
    ax.set_yscale("log")
    ax.set_ylim(bottom=1e-6)
    ax.set(xlabel="eigenvalue", ylabel="density (SLQ, Gaussian-smoothed)",
           title=f"Spectral densities at step {last['step']}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


def plot_sparsity(records, path) -> bool:
    steps, values = _series(records, "sparsity/mean")
    if not steps:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(steps, values, marker="o", ms=3)
    threshold = records[-1].get("sparsity/threshold")
    ax.set(xlabel="training step", ylabel=f"fraction with |σ''| > {threshold}",
           title="Activation second derivatives (mean over layers)")
    fig.tight_layout()
    storage.save_figure(fig, path, dpi=120)
    plt.close(fig)
    return True


FIGURES = (("curvature_spectra.png", plot_spectra), ("curvature_traces.png", plot_traces),
           ("curvature_layers.png", plot_layers), ("curvature_density.png", plot_density),
           ("activation_sparsity.png", plot_sparsity))


def plot_curvature(workdir: str, out: str = "") -> tuple[list[str], list[str]]:
    """Writes every figure the run's probes hold data for into `out` (default: the
    workdir); returns (written paths, skipped file names). ValueError without records."""
    records = read_records(workdir)
    if not records:
        raise ValueError(f"no probes.jsonl or probes_offline.jsonl in {workdir}")
    out = out or workdir
    storage.makedirs(out)
    written, skipped = [], []
    for name, draw in FIGURES:
        path = os.path.join(out, name)
        (written.append(path) if draw(records, path) else skipped.append(name))
    return written, skipped
