"""report.html: one self-contained page, readable offline, that says at a glance what a smaller model
gives up and what it gains.

The verdict first, then the quality table (each value with its retention of
the reference's), the performance table, the throughput sweep, and three plots
drawn by matplotlib as inline SVG: quality against size, latency distributions,
and tokens/s against concurrency. No script, no external file, font or URL:
the page is a document, not an app. Failed targets appear in the tables with
their reason and are left out of the plots.
"""

from __future__ import annotations

import io
import re
from html import escape
from typing import Any

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
PERCENT_METRICS = ("accuracy", "rouge_l", "semantic_similarity", "judge")

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 10px; }
.meta { color: #57606a; font-size: 13px; margin-bottom: 18px; word-break: break-all; }
.verdict { display: flex; gap: 18px; align-items: flex-start; padding: 14px 18px; border-radius: 8px; }
.verdict.pass { background: #dafbe1; border: 1px solid #4ac26b; }
.verdict.fail { background: #ffebe9; border: 1px solid #ff8182; }
.verdict.none { background: #f6f8fa; border: 1px solid #d0d7de; }
.badge { font-size: 28px; font-weight: 700; letter-spacing: 1px; min-width: 92px; }
.pass .badge { color: #1a7f37; } .fail .badge { color: #cf222e; } .none .badge { color: #57606a; }
.verdict ul { margin: 4px 0 0; padding-left: 18px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; margin: 6px 0 4px; }
th, td { border-bottom: 1px solid #d8dee4; padding: 6px 10px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f8fa; font-weight: 600; }
tr.failed td { color: #8c959f; font-style: italic; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.ref { font-size: 11px; color: #57606a; margin-left: 4px; }
.plots { display: grid; grid-template-columns: 1fr; gap: 18px; }
figure { margin: 0; border: 1px solid #d8dee4; border-radius: 8px; padding: 10px; }
figure svg { width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 13px; margin-top: 6px; }
.notes li { color: #57606a; font-size: 13px; }
"""


def _fmt_bytes(n: Any) -> str:
    n = int(n or 0)
    if not n:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _fmt_count(n: Any) -> str:
    n = int(n or 0)
    if not n:
        return "n/a"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _metric_value(metric: str, value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.1%}" if metric in PERCENT_METRICS else f"{value:.2f}"


def _colors(targets: list[dict[str, Any]]) -> dict[str, str]:
    return {t["name"]: PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}


def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    text = re.sub(r"^<\?xml[^>]*>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _figure(width: float = 9.0, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "path"  # glyphs as paths: no font to fetch
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def plot_quality_size(doc: dict[str, Any], colors: dict[str, str]) -> str:
    targets = [t for t in doc["targets"] if t.get("status") == "ok"]
    metric = doc.get("primary_metric", "accuracy")
    fig = _figure()
    ax = fig.subplots()
    sizes = [max(t.get("size_bytes", 0), 1) / 1e6 for t in targets]
    for t, size in zip(targets, sizes):
        value = t.get("quality", {}).get(metric, 0.0) * (100 if metric in PERCENT_METRICS else 1)
        marker = "*" if t["name"] == doc.get("reference") else "o"
        ax.scatter([size], [value], s=220 if marker == "*" else 110, color=colors[t["name"]], marker=marker,
                   edgecolors="#1f2328", linewidths=0.6, zorder=3)  # fmt: skip
        ax.annotate(t["name"], (size, value), textcoords="offset points", xytext=(8, 6), fontsize=10)
    if sizes and max(sizes) / min(sizes) > 10:
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("size on disk (MB)")
    ax.set_ylabel(f"{metric} (%)" if metric in PERCENT_METRICS else metric)
    if metric in PERCENT_METRICS:
        ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Quality against size ({metric}; the star is the reference)")
    fig.tight_layout()
    return _svg(fig)


def plot_latency(doc: dict[str, Any], colors: dict[str, str]) -> str:
    targets = [t for t in doc["targets"] if t.get("status") == "ok" and t.get("latencies_ms")]
    fig = _figure()
    ax = fig.subplots()
    if targets:
        data = [t["latencies_ms"] for t in targets]
        box = ax.boxplot(data, orientation="horizontal", patch_artist=True, widths=0.55, showfliers=True,
                         tick_labels=[t["name"] for t in targets])  # fmt: skip
        for patch, t in zip(box["boxes"], targets):
            patch.set_facecolor(colors[t["name"]])
            patch.set_alpha(0.75)
        for i, t in enumerate(targets, start=1):
            p95 = t.get("latency_ms", {}).get("p95", 0.0)
            ax.plot([p95], [i], marker="|", markersize=22, color="#cf222e", zorder=4)
        ax.plot([], [], marker="|", markersize=12, linestyle="none", color="#cf222e", label="p95")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_xlabel("latency per request (ms), lowest concurrency")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Latency distributions")
    fig.tight_layout()
    return _svg(fig)


def plot_throughput(doc: dict[str, Any], colors: dict[str, str]) -> str:
    targets = [t for t in doc["targets"] if t.get("status") == "ok" and t.get("sweep")]
    fig = _figure()
    ax = fig.subplots()
    levels = sorted({level["concurrency"] for t in targets for level in t["sweep"]})
    for t in targets:
        sweep = sorted(t["sweep"], key=lambda level: level["concurrency"])
        ax.plot([level["concurrency"] for level in sweep], [level["tokens_per_second"] for level in sweep],
                marker="o", linewidth=2, color=colors[t["name"]], label=t["name"])  # fmt: skip
    if levels:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels)
        ax.set_xticklabels([str(level) for level in levels])
    ax.set_xlabel("requests in flight (concurrency)")
    ax.set_ylabel("tokens/s (all requests)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    if targets:
        ax.legend(fontsize=9)
    ax.set_title("Throughput against concurrency")
    fig.tight_layout()
    return _svg(fig)


def _verdict(doc: dict[str, Any]) -> str:
    verdict = doc.get("verdict") or {}
    if not verdict.get("evaluated"):
        return '<section class="verdict none"><div class="badge">NO GATE</div><div>No gate was configured.</div></section>'
    passed = bool(verdict.get("passed"))
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in verdict.get("reasons", []))
    candidate = escape(str(doc.get("candidate", "")))
    return (f'<section class="verdict {"pass" if passed else "fail"}"><div class="badge">{"PASS" if passed else "FAIL"}'
            f'</div><div><strong>Gate on {candidate}</strong><ul>{reasons}</ul></div></section>')  # fmt: skip


def _name_cell(t: dict[str, Any], colors: dict[str, str], reference: str) -> str:
    ref = '<span class="ref">reference</span>' if t["name"] == reference else ""
    return f'<td><span class="swatch" style="background:{colors[t["name"]]}"></span>{escape(t["name"])}{ref}</td>'


def _quality_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    metrics = list(doc.get("quality_metrics", []))
    head = "".join(f"<th>{escape(m)}</th>" for m in metrics) + "<th>perplexity</th>"
    rows = []
    for t in doc["targets"]:
        if t.get("status") != "ok":
            cols = len(metrics) + 1
            rows.append(f'<tr class="failed">{_name_cell(t, colors, doc.get("reference", ""))}'
                        f'<td colspan="{cols}">failed: {escape(str(t.get("reason", "")))}</td></tr>')  # fmt: skip
            continue
        cells = []
        for m in metrics:
            value = t.get("quality", {}).get(m)
            kept = t.get("retention", {}).get(m)
            extra = f' <span class="ref">({kept:.0%})</span>' if kept is not None else ""
            cells.append(f"<td>{_metric_value(m, value)}{extra}</td>")
        ppl = t.get("perplexity")
        cells.append(f"<td>{ppl:.2f}</td>" if ppl else "<td>n/a</td>")
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}{''.join(cells)}</tr>")
    return f"<table><tr><th>target</th>{head}</tr>{''.join(rows)}</table>"


def _performance_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    head = ("<th>TTFT p50</th><th>TTFT p95</th><th>TPOT p50</th><th>latency p50</th><th>p95</th><th>p99</th>"
            "<th>tokens/s</th><th>size</th><th>memory</th><th>parameters</th>")  # fmt: skip
    rows = []
    for t in doc["targets"]:
        if t.get("status") != "ok":
            rows.append(f'<tr class="failed">{_name_cell(t, colors, doc.get("reference", ""))}'
                        f'<td colspan="10">failed</td></tr>')  # fmt: skip
            continue
        ttft, tpot, lat = t.get("ttft_ms", {}), t.get("tpot_ms", {}), t.get("latency_ms", {})
        cells = [f"{ttft.get('p50', 0):.1f} ms", f"{ttft.get('p95', 0):.1f} ms", f"{tpot.get('p50', 0):.2f} ms",
                 f"{lat.get('p50', 0):.1f} ms", f"{lat.get('p95', 0):.1f} ms", f"{lat.get('p99', 0):.1f} ms",
                 f"{t.get('tokens_per_second', 0):.1f}", _fmt_bytes(t.get("size_bytes")),
                 _fmt_bytes(t.get("memory_bytes")), _fmt_count(t.get("parameters"))]  # fmt: skip
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
    return f"<table><tr><th>target</th>{head}</tr>{''.join(rows)}</table>"


def _sweep_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    levels = doc.get("concurrency_levels") or []
    if not levels:
        return ""
    head = "".join(f"<th>concurrency {c}</th>" for c in levels)
    rows = []
    for t in doc["targets"]:
        if t.get("status") != "ok":
            continue
        by_level = {level["concurrency"]: level for level in t.get("sweep", [])}
        cells = []
        for c in levels:
            level = by_level.get(c)
            cells.append("<td>n/a</td>" if level is None else
                         f"<td>{level['tokens_per_second']:.1f} tok/s<br><span class='ref'>p95 "
                         f"{level['latency_ms']['p95']:.0f} ms</span></td>")  # fmt: skip
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}{''.join(cells)}</tr>")
    return f"<table><tr><th>target</th>{head}</tr>{''.join(rows)}</table>"


def render_html(doc: dict[str, Any]) -> str:
    """The report document (report.json) as one self-contained HTML page."""
    colors = _colors(doc.get("targets", []))
    title = escape(str(doc.get("title", "Evaluation report")))
    meta = (f"Dataset <code>{escape(str(doc.get('dataset_uri', '')))}</code> ({int(doc.get('num_prompts', 0))} "
            f"prompts) · accuracy: <code>{escape(str(doc.get('metric', 'exact_match')))}</code> · reference: "
            f"<strong>{escape(str(doc.get('reference', '')))}</strong> · {escape(str(doc.get('created', '')))}")  # fmt: skip
    figures = [
        ("plot-quality-size", plot_quality_size(doc, colors),
         "Quality against size on disk: up and to the left is better."),
        ("plot-latency", plot_latency(doc, colors),
         "Per-request latency at the lowest concurrency: boxes span p25 to p75, whiskers 1.5 IQR; the red tick is p95."),
        ("plot-throughput", plot_throughput(doc, colors),
         "Tokens per second over all requests in flight, at each level of the concurrency sweep."),
    ]  # fmt: skip
    notes = [f"<li><strong>{escape(t['name'])}</strong>: {escape(str(n))}</li>"
             for t in doc.get("targets", []) for n in t.get("notes", [])]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{title}</h1>",
        f'<div class="meta">{meta}</div>',
        _verdict(doc),
        "<h2>Quality</h2>",
        "<p class='meta'>Each value with, in brackets, its retention of the reference's value.</p>",
        _quality_table(doc, colors),
        "<h2>Speed and footprint</h2>",
        _performance_table(doc, colors),
        "<h2>Throughput under load</h2>" + _sweep_table(doc, colors) if doc.get("concurrency_levels") else "",
        "<h2>Plots</h2>",
        '<div class="plots">',
        *[f'<figure id="{fid}">{svg}<figcaption>{escape(caption)}</figcaption></figure>' for fid, svg, caption in figures],
        "</div>",
        f'<h2>Notes</h2><ul class="notes">{"".join(notes)}</ul>' if notes else "",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)
