"""report.html: one self-contained page, readable offline, that says at a glance what a smaller model
gives up and what it gains.

The verdict first, then the quality table (each value with its retention of
the reference's), the LLM judge's ratings when a judge was set, the
performance table, the throughput sweep, and three plots drawn by matplotlib
as inline SVG: quality against size, latency distributions, and tokens/s
against concurrency. No script, no external file, font or URL:
the page is a document, not an app. Failed targets appear in the tables,
greyed out, with their reason, and are left out of the plots. Each target keeps
one colour everywhere. The page reads only the report document (report.json's
dict), so an old report.json can be rendered again.
"""

from __future__ import annotations

import io
import re
from html import escape
from typing import Any

from slmops.evaluation.formats import PERCENT_METRICS, count_text, metric_text, size_text

PALETTE = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c")
P95_COLOR = "#cf222e"

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 28px 0 10px; }
.meta { color: #57606a; font-size: 13px; margin: 0 0 18px; overflow-wrap: anywhere; }
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
td.reason { text-align: left; white-space: normal; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 6px; }
.small { font-size: 11px; color: #57606a; margin-left: 4px; }
.plots { display: grid; grid-template-columns: 1fr; gap: 18px; }
figure { margin: 0; border: 1px solid #d8dee4; border-radius: 8px; padding: 10px; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: #57606a; font-size: 13px; margin-top: 6px; }
.notes li { color: #57606a; font-size: 13px; }
"""


def _fmt_ms(spread: dict[str, Any] | None, key: str, digits: int = 1) -> str:
    value = (spread or {}).get(key)
    return "n/a" if value is None else f"{value:.{digits}f} ms"


def target_colors(targets: list[dict[str, Any]]) -> dict[str, str]:
    """One colour per target, by its place in the report, the same in every table and plot."""
    return {t.get("name", ""): PALETTE[i % len(PALETTE)] for i, t in enumerate(targets)}


def _measured(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in doc.get("targets", []) if t.get("status") == "ok"]


# -- plots ----------------------------------------------------------------------------


def _figure(width: float = 9.0, height: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _svg(fig: Any, prefix: str) -> str:
    """The figure as an inline <svg>: no prolog, no metadata, glyphs drawn as paths (no font to
    fetch), and its ids prefixed so that three plots on one page never share one."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": prefix}):
        fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drops the XML prolog and the DOCTYPE
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    text = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', text)
    text = re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', text)
    return re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", text)


def plot_quality_size(doc: dict[str, Any], colors: dict[str, str]) -> str:
    """Scatter: the primary quality metric against size on disk, the reference as a star."""
    metric = doc.get("primary_metric", "accuracy")
    scale = 100 if metric in PERCENT_METRICS else 1
    points = [(t, t["size_bytes"] / 1e6, t["quality"][metric] * scale) for t in _measured(doc)
              if t.get("size_bytes") and (t.get("quality") or {}).get(metric) is not None]  # fmt: skip
    fig = _figure()
    ax = fig.subplots()
    for t, size, value in points:
        reference = t["name"] == doc.get("reference")
        ax.scatter([size], [value], s=260 if reference else 110, color=colors[t["name"]],
                   marker="*" if reference else "o", edgecolors="#1f2328", linewidths=0.6, zorder=3)  # fmt: skip
        ax.annotate(t["name"], (size, value), textcoords="offset points", xytext=(9, 7), fontsize=10)
    sizes = [size for _, size, _ in points]
    if sizes and max(sizes) / min(sizes) > 10:
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.15, y=0.1)
    if scale == 100:
        ax.set_ylim(0, 105)
    ax.set_xlabel("size on disk (MB)" + (", log scale" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(f"{metric} (%)" if scale == 100 else metric)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"Quality against size ({metric}; the star is the reference)")
    fig.tight_layout()
    return _svg(fig, "quality-size")


def plot_latency(doc: dict[str, Any], colors: dict[str, str]) -> str:
    """Horizontal box plots of per-request latency at concurrency 1, p95 as a red diamond."""
    targets = [t for t in _measured(doc) if t.get("latencies_ms")]
    fig = _figure(height=0.9 + 0.8 * max(len(targets), 2))
    ax = fig.subplots()
    if targets:
        box = ax.boxplot([t["latencies_ms"] for t in targets], orientation="horizontal", patch_artist=True,
                         widths=0.55, tick_labels=[t["name"] for t in targets],
                         medianprops={"color": "#1f2328", "linewidth": 1.5},
                         flierprops={"markersize": 4, "markeredgecolor": "#57606a"})  # fmt: skip
        for patch, t in zip(box["boxes"], targets):
            patch.set_facecolor(colors[t["name"]])
            patch.set_alpha(0.8)
        p95 = [(t.get("latency_ms") or {}).get("p95") for t in targets]
        marked = [(value, row) for row, value in enumerate(p95, start=1) if value is not None]
        ax.scatter([v for v, _ in marked], [row for _, row in marked], marker="D", s=40, color=P95_COLOR,
                   edgecolors="white", linewidths=0.8, zorder=4, label="p95")  # fmt: skip
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
        ax.invert_yaxis()  # the first target on top, as in the tables
    ax.set_xlabel("latency per request (ms), concurrency 1")
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title("Latency distributions")
    fig.tight_layout()
    return _svg(fig, "latency")


def plot_throughput(doc: dict[str, Any], colors: dict[str, str]) -> str:
    """One line per target: tokens/s over all requests in flight at each concurrency of the sweep."""
    targets = [t for t in _measured(doc) if t.get("sweep")]
    fig = _figure()
    ax = fig.subplots()
    levels = sorted({level["concurrency"] for t in targets for level in t["sweep"]})
    for t in targets:
        sweep = sorted(t["sweep"], key=lambda level: level["concurrency"])
        ax.plot([level["concurrency"] for level in sweep], [level.get("tokens_per_second", 0.0) for level in sweep],
                marker="o", linewidth=2, color=colors[t["name"]], label=t["name"])  # fmt: skip
    if levels:
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, [str(level) for level in levels])
        ax.minorticks_off()
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=9, frameon=False)
    ax.set_xlabel("requests in flight (concurrency)")
    ax.set_ylabel("tokens/s (all requests)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.set_title("Throughput against concurrency")
    fig.tight_layout()
    return _svg(fig, "throughput")


# -- page -----------------------------------------------------------------------------


def _verdict(doc: dict[str, Any]) -> str:
    verdict = doc.get("verdict") or {}
    if not verdict.get("evaluated"):
        return ('<section class="verdict none"><div class="badge">NO GATE</div>'
                "<div>No gate was configured: nothing was judged.</div></section>")  # fmt: skip
    passed = bool(verdict.get("passed"))
    reasons = "".join(f"<li>{escape(str(r))}</li>" for r in verdict.get("reasons", []))
    candidate = escape(str(doc.get("candidate") or "the candidate"))
    return (f'<section class="verdict {"pass" if passed else "fail"}"><div class="badge">{"PASS" if passed else "FAIL"}'
            f"</div><div><strong>Gate on {candidate}</strong><ul>{reasons}</ul></div></section>")  # fmt: skip


def _name_cell(t: dict[str, Any], colors: dict[str, str], reference: str) -> str:
    name = t.get("name", "")
    ref = '<span class="small">reference</span>' if name == reference else ""
    return f'<td><span class="swatch" style="background:{colors[name]}"></span>{escape(name)}{ref}</td>'


def _failed_row(t: dict[str, Any], colors: dict[str, str], doc: dict[str, Any], columns: int) -> str:
    reason = escape(str(t.get("reason") or "no reason given"))
    return (f'<tr class="failed">{_name_cell(t, colors, doc.get("reference", ""))}'
            f'<td class="reason" colspan="{columns}">failed: {reason}</td></tr>')  # fmt: skip


def _table(head: list[str], rows: list[str]) -> str:
    header = "".join(f"<th>{escape(h)}</th>" for h in ["target", *head])
    return f"<table><thead><tr>{header}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _quality_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    metrics = list(doc.get("quality_metrics", []))
    rows = []
    for t in doc.get("targets", []):
        if t.get("status") != "ok":
            rows.append(_failed_row(t, colors, doc, len(metrics) + 1))
            continue
        cells = []
        for m in metrics:
            kept = (t.get("retention") or {}).get(m)
            extra = f' <span class="small">({kept:.0%})</span>' if kept is not None else ""
            cells.append(f"<td>{metric_text(m, (t.get('quality') or {}).get(m))}{extra}</td>")
        ppl = t.get("perplexity")
        cells.append(f"<td>{ppl:.2f}</td>" if ppl else "<td>n/a</td>")
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}{''.join(cells)}</tr>")
    return _table([*metrics, "perplexity"], rows)


def _judge_section(doc: dict[str, Any], colors: dict[str, str]) -> str:
    """The LLM judge: per target the mean rating, its retention and the counts (with why a mean is
    missing), then a few example ratings; "" when no target was judged."""
    judged = [t for t in _measured(doc) if t.get("judge")]
    if not judged:
        return ""
    reference = doc.get("reference", "")
    errors = any(t["judge"].get("error") for t in judged)  # a column for why a mean is missing
    rows, examples = [], []
    for t in judged:
        j, kept = t["judge"], (t.get("retention") or {}).get("judge")
        cells = ["n/a" if j.get("mean") is None else f"{j['mean']:.2f}", "n/a" if kept is None else f"{kept:.0%}",
                 str(j.get("rated", 0)), str(j.get("unparseable", 0)), str(j.get("failed", 0))]  # fmt: skip
        why = f'<td class="reason">{escape(str(j.get("error") or ""))}</td>' if errors else ""
        rows.append(f"<tr>{_name_cell(t, colors, reference)}" + "".join(f"<td>{c}</td>" for c in cells)
                    + f"{why}</tr>")  # fmt: skip
        for e in j.get("examples") or []:
            score = "unparseable" if e.get("score") is None else escape(str(e["score"]))
            texts = "".join(f'<td class="reason">{escape(str(e.get(k) or ""))}</td>'
                            for k in ("prompt", "answer", "reference", "reason"))  # fmt: skip
            examples.append(f"<tr>{_name_cell(t, colors, reference)}<td>{score}</td>{texts}</tr>")
    model = doc.get("judge_model")
    by = f"<code>{escape(str(model))}</code>" if model else "The judge"
    parts = ["<h2>LLM judge</h2>",
             f'<p class="meta">{by} rated each answer 1..10 against the reference answer; the mean is over the '
             "replies that held a rating (unparseable replies are counted, not scored).</p>",
             _table(["mean (1..10)", "retention", "rated", "unparseable", "failed"]
                    + (["why no mean"] if errors else []), rows)]  # fmt: skip
    if examples:
        parts += ['<p class="meta">Example ratings (shortened).</p>',
                  _table(["score", "prompt", "answer", "reference", "the judge's reason"], examples)]  # fmt: skip
    return "\n".join(parts)


def _performance_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    head = ["TTFT p50", "TTFT p95", "TPOT p50", "latency p50", "p95", "p99", "tokens/s", "size", "memory",
            "parameters"]  # fmt: skip
    rows = []
    for t in doc.get("targets", []):
        if t.get("status") != "ok":
            rows.append(_failed_row(t, colors, doc, len(head)))
            continue
        ttft, tpot, lat = t.get("ttft_ms"), t.get("tpot_ms"), t.get("latency_ms")
        tps = t.get("tokens_per_second")
        cells = [_fmt_ms(ttft, "p50"), _fmt_ms(ttft, "p95"), _fmt_ms(tpot, "p50", 2), _fmt_ms(lat, "p50"),
                 _fmt_ms(lat, "p95"), _fmt_ms(lat, "p99"), "n/a" if tps is None else f"{tps:.1f}",
                 size_text(t.get("size_bytes")), size_text(t.get("memory_bytes")),
                 count_text(t.get("parameters"))]  # fmt: skip
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}"
                    + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")  # fmt: skip
    return _table(head, rows)


def _sweep_table(doc: dict[str, Any], colors: dict[str, str]) -> str:
    levels = doc.get("concurrency_levels") or []
    rows = []
    for t in _measured(doc):
        by_level = {level["concurrency"]: level for level in t.get("sweep", [])}
        cells = []
        for c in levels:
            level = by_level.get(c)
            if level is None:
                cells.append("<td>n/a</td>")
                continue
            p95 = _fmt_ms(level.get("latency_ms"), "p95", 0)
            errors = f", {level['errors']} errors" if level.get("errors") else ""
            cells.append(f"<td>{level.get('tokens_per_second', 0.0):.1f} tok/s<br>"
                         f'<span class="small">p95 {p95}{errors}</span></td>')  # fmt: skip
        rows.append(f"<tr>{_name_cell(t, colors, doc.get('reference', ''))}{''.join(cells)}</tr>")
    return _table([f"concurrency {c}" for c in levels], rows)


def _meta(doc: dict[str, Any]) -> str:
    parts = [f"Dataset <code>{escape(str(doc.get('dataset_uri', '')))}</code> ({int(doc.get('num_prompts') or 0)} prompts)",
             f"primary metric: <code>{escape(str(doc.get('primary_metric', 'accuracy')))}</code>"]  # fmt: skip
    if doc.get("metric"):
        parts.append(f"accuracy by <code>{escape(str(doc['metric']))}</code>")
    parts.append(f"reference: <strong>{escape(str(doc.get('reference', '')))}</strong>")
    if doc.get("created"):
        parts.append(escape(str(doc["created"])))
    return " · ".join(parts)


def render_html(document: dict[str, Any]) -> str:
    """The report document (report.json) as one self-contained HTML page."""
    doc = document
    colors = target_colors(doc.get("targets", []))
    title = escape(str(doc.get("title", "Evaluation report")))
    figures = [
        ("plot-quality-size", plot_quality_size(doc, colors),
         "Quality against size on disk: up and to the left is better. Failed targets are left out."),
        ("plot-latency", plot_latency(doc, colors),
         "Per-request latency at concurrency 1: boxes span p25 to p75 with the median, whiskers reach "
         "1.5 IQR, dots are outliers; the red diamond is p95."),
        ("plot-throughput", plot_throughput(doc, colors),
         "Tokens per second over all requests in flight, at each level of the concurrency sweep."),
    ]  # fmt: skip
    notes = [f"<li><strong>{escape(str(t.get('name', '')))}</strong>: {escape(str(n))}</li>"
             for t in doc.get("targets", []) for n in t.get("notes") or []]  # fmt: skip
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{CSS}</style></head><body><main>",
        f"<h1>{title}</h1>",
        f'<p class="meta">{_meta(doc)}</p>',
        _verdict(doc),
        "<h2>Quality</h2>",
        '<p class="meta">Each value with, in brackets, its retention of the reference\'s value.</p>',
        _quality_table(doc, colors),
        _judge_section(doc, colors),
        "<h2>Speed and footprint</h2>",
        '<p class="meta">Timings at concurrency 1: time to first token (TTFT), time per output token '
        "(TPOT) and whole-request latency; tokens/s is one request's decode speed.</p>",
        _performance_table(doc, colors),
        ("<h2>Throughput under load</h2>" + _sweep_table(doc, colors))
        if doc.get("concurrency_levels")
        else "",
        "<h2>Plots</h2>",
        '<div class="plots">',
        *[
            f'<figure id="{fid}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'
            for fid, svg, caption in figures
        ],
        "</div>",
        f'<h2>Notes</h2><ul class="notes">{"".join(notes)}</ul>' if notes else "",
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)
