"""PNG plots of a comparison grid (matplotlib, Agg backend).

- ``error_vs_sparsity_<pattern>.png``: relative error vs sparsity per method (log y), one
  panel per layer, the certified lower bound dashed where there is one; N:M patterns
  (one sparsity) as dots per layer;
- ``gap_to_best.png`` / ``gap_to_bound.png``: each method's gap per layer, one panel per
  (pattern, sparsity), symmetric-log y in percent;
- ``runtime.png``: solve time per method (log y).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerprune.extras import require
from layerprune.problems.atomic import atomic_write
from layerprune.reports.grid import sparsity_label

MARKERS = "osD^v<>pX*h"


def _save(fig, path: Path) -> None:
    """One PNG, written atomically; the figure is closed."""
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        pyplot().close(fig)


def _safe(name: str) -> str:
    return name.replace(":", "of")


def _grid(n: int, ncols: int = 4) -> tuple[int, int]:
    ncols = max(1, min(ncols, n))
    return math.ceil(n / ncols), ncols


def _finite(x: float) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here, not with the module: the ``reports`` extra)."""
    require("matplotlib", "reports").use("Agg")
    return require("matplotlib.pyplot", "reports", "matplotlib")


def make_plots(rows: list[dict[str, Any]], folder: Path, methods: Sequence[str]) -> dict[str, str]:
    """Write the PNGs into ``folder``; returns {file name: caption}."""
    plt = pyplot()
    ok = [r for r in rows if r["status"] == "ok"]
    images: dict[str, str] = {}
    if not ok:
        return images
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    patterns = list(dict.fromkeys(r["pattern"] for r in rows))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    marker = {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(methods)}

    for pat in patterns:
        pr = [r for r in ok if r["pattern"] == pat]
        swept = len({sparsity_label(r["sparsity"]) for r in pr}) > 1 or ":" not in pat
        name = f"error_vs_sparsity_{_safe(pat)}.png"
        if swept:
            nr, nc = _grid(len(problems))
            fig, axes = plt.subplots(nr, nc, figsize=(3.6 * nc, 2.8 * nr), squeeze=False)
            for ax, prob in zip(axes.flat, problems):
                rr = [r for r in pr if r["problem"] == prob]
                for m in methods:
                    pts = sorted((r["sparsity"], r["relative_error"]) for r in rr if r["method"] == m)
                    if pts:
                        ax.plot(*zip(*pts), marker=marker[m], color=colors[m], label=m, ms=4)
                lb = sorted({(r["sparsity"], r["bound_relative"]) for r in rr
                             if r["bound_kind"] != "none" and r["bound_relative"] > 0})
                if lb:
                    ax.plot(*zip(*lb), "k--", lw=1, label="lower bound")
                ax.set_yscale("log")
                ax.set_title(prob, fontsize=8)
                ax.set_xlabel("sparsity", fontsize=8)
                ax.tick_params(labelsize=7)
            for ax in list(axes.flat)[len(problems):]:
                ax.axis("off")
            axes.flat[0].set_ylabel("relative error (log)")
            handles, labels = axes.flat[0].get_legend_handles_labels()
            fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
            fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (2.8 * nr)))
            caption = f"Relative error vs sparsity, pattern {pat} (log scale; dashed: certified lower bound)"
        else:
            fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(problems) + 2), 3.5))
            for m in methods:
                pts = [(problems.index(r["problem"]), r["relative_error"]) for r in pr if r["method"] == m]
                if pts:
                    ax.plot(*zip(*pts), marker[m], color=colors[m], label=m)
            lb = [(problems.index(r["problem"]), r["bound_relative"]) for r in pr
                  if r["bound_kind"] != "none" and r["bound_relative"] > 0]
            if lb:
                ax.plot(*zip(*sorted(set(lb))), "k_", ms=14, label="lower bound")
            ax.set_yscale("log")
            ax.set_xticks(range(len(problems)), problems, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("relative error (log)")
            ax.legend(fontsize=8)
            fig.tight_layout()
            caption = f"Relative error per layer, pattern {pat} (log scale; bars: certified lower bound)"
        _save(fig, folder / name)
        images[name] = caption

    cells = sorted({(r["pattern"], sparsity_label(r["sparsity"])) for r in ok}, key=lambda c: (c[0], float(c[1])))
    for key, title in (("gap_to_best", "gap to the best method"), ("gap_to_bound", "gap to the lower bound")):
        panel_w = max(4.5, 0.35 * len(problems) + 2.5)
        nr, nc = _grid(len(cells), max(1, min(3, int(20 // panel_w))))
        fig, axes = plt.subplots(nr, nc, figsize=(panel_w * nc, 3.2 * nr), squeeze=False)
        any_point = False
        for ax, (pat, s) in zip(axes.flat, cells):
            cr = [r for r in ok if r["pattern"] == pat and sparsity_label(r["sparsity"]) == s]
            for j, m in enumerate(methods):
                off = (j - (len(methods) - 1) / 2) * 0.08
                pts = [(problems.index(r["problem"]) + off, 100 * r[key]) for r in cr
                       if r["method"] == m and _finite(r[key])]
                if pts:
                    any_point = True
                    ax.plot(*zip(*pts), marker[m], color=colors[m], label=m, ms=4)
            ax.set_yscale("symlog", linthresh=0.1)
            ax.set_title(f"{pat}, sparsity {s}", fontsize=9)
            labels = problems
            if key == "gap_to_bound":
                kind = {r["problem"]: r["bound_kind"] for r in cr}
                short = {"exact": "exact", "perspective": "relax.", "diagonal": "diag.", "none": "no bound"}
                labels = [f"{p} ({short.get(kind.get(p, 'none'), kind.get(p))})" for p in problems]
            ax.set_xticks(range(len(problems)), labels, rotation=60, ha="right", fontsize=6)
            ax.set_ylabel("%", fontsize=8)
            if key == "gap_to_bound" and not any(_finite(r[key]) for r in cr):
                ax.text(0.5, 0.5, "no bound", transform=ax.transAxes, ha="center", va="center", color="gray")
        for ax in list(axes.flat)[len(cells):]:
            ax.axis("off")
        handles, labels = [], []
        for ax in axes.flat:
            h, lab = ax.get_legend_handles_labels()
            for hh, ll in zip(h, lab):
                if ll not in labels:
                    handles.append(hh)
                    labels.append(ll)
        if labels:
            fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / (3.2 * nr)))
        name = f"{key}.png"
        _save(fig, folder / name)
        suffix = "" if any_point or key == "gap_to_best" else " — no bound available for any layer"
        images[name] = f"Per layer: each method's {title}, in % (symmetric log scale){suffix}"

    fig, ax = plt.subplots(figsize=(1.2 * len(methods) + 2, 3.2))
    data = [[r["seconds"] for r in ok if r["method"] == m and r["seconds"] > 0] or [float("nan")] for m in methods]
    ax.boxplot(data)
    ax.set_xticks(range(1, len(methods) + 1), list(methods))
    ax.set_yscale("log")
    ax.set_ylabel("seconds per solve (log)")
    fig.tight_layout()
    _save(fig, folder / "runtime.png")
    images["runtime.png"] = "Run time per solve, per method (all layers, patterns and sparsities)"
    return images


def plot_layer_sparsity(layers: list[dict[str, Any]], path: str | Path, sparsity: float | None = None,
                        title: str = "") -> Path:
    """Per-layer target sparsity against the block (a run log's ``layers`` entries: ``block``, ``layer``,
    ``shape``, ``target_sparsity``): one marker series per layer name (q_proj, down_proj, …), the
    size-weighted mean of each block as a black line and the run's ``sparsity`` dashed. One PNG."""
    plt = pyplot()
    path = Path(path)
    names = list(dict.fromkeys(e["layer"] for e in layers))
    blocks = sorted({int(e["block"]) for e in layers})
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(blocks) + 3), 3.6))
    for i, name in enumerate(names):
        pts = sorted((int(e["block"]), 100 * float(e["target_sparsity"])) for e in layers if e["layer"] == name)
        ax.plot(*zip(*pts), MARKERS[i % len(MARKERS)], color=f"C{i % 10}", ms=4, label=name.split(".")[-1], alpha=0.8)
    mean = []
    for b in blocks:
        entries = [e for e in layers if int(e["block"]) == b]
        size = sum(e["shape"][0] * e["shape"][1] for e in entries)
        mean.append(100 * sum(e["target_sparsity"] * e["shape"][0] * e["shape"][1] for e in entries) / max(size, 1))
    ax.plot(blocks, mean, "k-", lw=1.2, label="block mean")
    if sparsity is not None:
        ax.axhline(100 * sparsity, color="gray", ls="--", lw=1, label=f"run {100 * sparsity:g} %")
    ax.set_xlabel("block")
    ax.set_ylabel("target sparsity (%)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=min(4, len(names) + 2), loc="best")
    fig.tight_layout()
    _save(fig, path)
    return path
