"""The report: ``report.md``, a self-contained ``report.html`` (PNGs inlined as base64), PNGs.

Built as a list of blocks (heading, paragraph, table, image) rendered twice, so the
Markdown and the HTML say the same thing.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerprune.problems.atomic import atomic_write_text
from layerprune.reports import plots
from layerprune.reports.bounds import bound_limits
from layerprune.reports.grid import sparsity_label

Block = tuple  # ("h", level, text) | ("p", text) | ("table", header, rows) | ("img", file, caption)


def _pct(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{100 * x:.3g}%"


def _num(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:.4g}"


def _geomean(xs: list[float]) -> float:
    xs = [x for x in xs if x > 0 and math.isfinite(x)]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def _median(xs: list[float]) -> float:
    xs = sorted(x for x in xs if math.isfinite(x))
    if not xs:
        return float("nan")
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _bound_text(r: dict[str, Any]) -> str:
    if r["bound_kind"] == "none":
        return "no bound"
    return f"{r['bound_relative']:.4g} ({r['bound_kind']})"


def build_blocks(rows: list[dict[str, Any]], methods: Sequence[str], sparsities: Sequence[float],
                 patterns: Sequence[str], images: dict[str, str], device: str | None) -> list[Block]:
    ok = [r for r in rows if r["status"] == "ok"]
    failed = [r for r in rows if r["status"] != "ok"]
    problems: dict[str, tuple[str, int, int]] = {}
    for r in rows:
        problems.setdefault(r["problem"], (r["layer"], r["out"], r["in"]))
    cells = sorted({(r["pattern"], sparsity_label(r["sparsity"])) for r in rows}, key=lambda c: (c[0], float(c[1])))
    b: list[Block] = [("h", 1, "Layer pruning: objective gaps")]
    b.append(("p", (
        f"Generated {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}; device: {device or 'default'}. "
        f"Methods: {', '.join(methods)}. Sparsities: {', '.join(sparsity_label(s) for s in sparsities)}. "
        f"Patterns: {', '.join(patterns)}. Problems: {len(problems)}; rows: {len(rows)} ({len(failed)} failed)."
    )))
    b.append(("p", (
        "Objective f(W) = tr((W − Ŵ) H (W − Ŵ)ᵀ) with the damped Hessian; relative error = f(W) / tr(Ŵ H Ŵᵀ). "
        "Gap to best = (f − f_best) / f_best over the methods of the same layer, pattern and sparsity. "
        "Gap to bound = (f − LB) / LB for a certified lower bound LB ≤ f*: a certified bound on how far the "
        "method is from the optimum. An N:M pattern runs only at its own sparsity 1 − N/M."
    )))
    b.append(("p", "Lower bounds — " + bound_limits()))
    # summary
    b.append(("h", 2, "Summary"))
    header = ["pattern", "sparsity", "method", "geo-mean rel. error", "best on", "median gap to best",
              "median gap to exact optimum", "median gap to perspective bound", "median gap to diagonal bound",
              "bounds (exact/perspective/diagonal/none)"]
    table = []
    for pat, s in cells:
        cell_rows = [r for r in ok if r["pattern"] == pat and sparsity_label(r["sparsity"]) == s]
        nprob = len({r["problem"] for r in cell_rows})
        for m in methods:
            mr = [r for r in cell_rows if r["method"] == m]
            if not mr:
                table.append([pat, s, m] + ["—"] * 7)
                continue
            gb = [r["gap_to_bound"] for r in mr if r["bound_kind"] != "none"]
            ge = [r["gap_to_bound"] for r in mr if r["bound_kind"] == "exact"]
            gr = [r["gap_to_bound"] for r in mr if r["bound_kind"] == "perspective"]
            gd = [r["gap_to_bound"] for r in mr if r["bound_kind"] == "diagonal"]
            table.append([
                pat, s, m, _num(_geomean([r["relative_error"] for r in mr])),
                f"{sum(1 for r in mr if r['gap_to_best'] <= 1e-9)}/{nprob}",
                _pct(_median([r["gap_to_best"] for r in mr])),
                _pct(_median(ge)) if ge else "no bound",
                _pct(_median(gr)) if gr else "no bound",
                _pct(_median(gd)) if gd else "no bound",
                f"{len(ge)}/{len(gr)}/{len(gd)}/{len(mr) - len(gb)}",
            ])
    b.append(("table", header, table))
    kinds = defaultdict(int)
    for r in ok:
        kinds[r["bound_kind"]] += 1
    b.append(("p", "Bound kinds over the rows: " + ", ".join(
        f"{k if k != 'none' else 'no bound'}: {v}" for k, v in sorted(kinds.items()))))
    for key in ("error_vs_sparsity", "gap_to_best", "gap_to_bound", "runtime"):
        for name in sorted(n for n in images if n.startswith(key)):
            b.append(("img", name, images[name]))
    # per-layer tables
    b.append(("h", 2, "Per layer"))
    for pat, s in cells:
        cell_rows = [r for r in rows if r["pattern"] == pat and sparsity_label(r["sparsity"]) == s]
        b.append(("h", 3, f"{pat}, sparsity {s}"))
        header = ["problem", "shape"] + [f"{m} rel. error" for m in methods] + ["lower bound (rel.)"] + \
            [f"{m} gap to bound" for m in methods]
        table = []
        for name, (layer, o, i) in problems.items():
            pr = {r["method"]: r for r in cell_rows if r["problem"] == name}
            if not pr:
                continue
            any_row = next(iter(pr.values()))
            errs, gaps = [], []
            best = min((r["objective"] for r in pr.values() if r["status"] == "ok"), default=math.nan)
            for m in methods:
                r = pr.get(m)
                if r is None:
                    errs.append("—")
                    gaps.append("—")
                elif r["status"] != "ok":
                    errs.append("failed")
                    gaps.append("—")
                else:
                    e = _num(r["relative_error"])
                    errs.append(f"**{e}**" if r["objective"] <= best else e)
                    gaps.append(_pct(r["gap_to_bound"]) if r["bound_kind"] != "none" else "no bound")
            table.append([name if name == layer else f"{name} ({layer})", f"{o}×{i}"] + errs +
                         [_bound_text(any_row)] + gaps)
        b.append(("table", header, table))
    # run time
    b.append(("h", 2, "Run time"))
    table = []
    for m in methods:
        secs = [r["seconds"] for r in ok if r["method"] == m]
        iters = [r["iterations"] for r in ok if r["method"] == m]
        table.append([m, str(len(secs)), _num(sum(secs)) if secs else "—", _num(_median(secs)),
                      _num(_median([float(i) for i in iters]))])
    b.append(("table", ["method", "solves", "total s", "median s", "median iterations"], table))
    bsecs = {}
    for r in ok:
        bsecs[(r["problem"], r["pattern"], sparsity_label(r["sparsity"]))] = (r["bound_kind"], r["bound_seconds"])
    by_kind = defaultdict(list)
    for kind, sec in bsecs.values():
        by_kind[kind].append(sec)
    b.append(("p", "Lower-bound time: " + ", ".join(
        f"{k}: {len(v)} cells, {_num(sum(v))} s" for k, v in sorted(by_kind.items()))))
    if failed:
        b.append(("h", 2, "Failures"))
        b.append(("table", ["problem", "pattern", "sparsity", "method", "status"],
                  [[r["problem"], r["pattern"], sparsity_label(r["sparsity"]), r["method"], r["status"]] for r in failed]))
    return b


def _md_cell(x: str) -> str:
    return str(x).replace("|", "\\|")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for blk in blocks:
        if blk[0] == "h":
            lines += ["#" * blk[1] + " " + blk[2], ""]
        elif blk[0] == "p":
            lines += [blk[1], ""]
        elif blk[0] == "table":
            header, rows = blk[1], blk[2]
            lines.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        elif blk[0] == "img":
            lines += [f"![{blk[2]}]({blk[1]})", "", f"*{blk[2]}*", ""]
    return "\n".join(lines)


def _html_inline(text: str) -> str:
    t = html.escape(text)
    parts = t.split("**")
    return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list[Block], folder: Path) -> str:
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>layerprune report</title>",
        "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#eee}"
        "td:first-child{text-align:left}img{max-width:100%}</style></head><body>",
    ]
    for blk in blocks:
        if blk[0] == "h":
            out.append(f"<h{blk[1]}>{html.escape(blk[2])}</h{blk[1]}>")
        elif blk[0] == "p":
            out.append(f"<p>{_html_inline(blk[1])}</p>")
        elif blk[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in blk[1]) + "</tr>")
            for row in blk[2]:
                out.append("<tr>" + "".join(f"<td>{_html_inline(str(c))}</td>" for c in row) + "</tr>")
            out.append("</table>")
        elif blk[0] == "img":
            data = base64.b64encode((folder / blk[1]).read_bytes()).decode("ascii")
            out.append(f"<figure><img alt='{html.escape(blk[2])}' src='data:image/png;base64,{data}'>"
                       f"<figcaption>{html.escape(blk[2])}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(rows: list[dict[str, Any]], output: str | os.PathLike, methods: Sequence[str],
                 sparsities: Sequence[float], patterns: Sequence[str], device: str | None = None) -> dict[str, Path]:
    """Write the PNG plots, ``report.md`` and ``report.html`` into ``output``; returns their paths."""
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    images = plots.make_plots(rows, folder, methods)
    blocks = build_blocks(rows, methods, sparsities, patterns, images, device)
    md, hp = folder / "report.md", folder / "report.html"
    atomic_write_text(md, to_markdown(blocks))
    atomic_write_text(hp, to_html(blocks, folder))
    return {"markdown": md, "html": hp, **{k: folder / k for k in images}}
