"""The HTML report page: self-contained, escaped, failed targets shown, one figure per plot."""

from __future__ import annotations

import re

import pytest

from slmops.evaluation.html import render_html, target_colors
from slmops.testing.report_sample import sample_document

PLOTS = ("plot-quality-size", "plot-latency", "plot-throughput")


@pytest.fixture(scope="module")
def page() -> str:
    return render_html(sample_document())


def _figure(page: str, figure_id: str) -> str:
    return page.split(f'<figure id="{figure_id}">', 1)[1].split("</figure>", 1)[0]


def test_the_page_is_self_contained(page):
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page.lower()
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith("#"), attribute  # nothing outside the page
    assert "@import" not in page and "url(http" not in page and "<?xml" not in page
    assert "font-face" not in page and "<text" not in page  # glyphs are paths: no font to fetch


def test_three_plots_each_in_its_figure_with_ids_of_its_own(page):
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across the inline SVGs"
    for figure_id in PLOTS:
        body = _figure(page, figure_id)
        assert body.startswith("<svg") and "</svg>" in body and "<figcaption>" in body
        assert body.count("<path") > 10  # axes, ticks and marks really drawn


def test_each_measured_target_keeps_its_colour_in_every_plot(page):
    doc = sample_document()
    colors = target_colors(doc["targets"])
    for name in ("teacher", "student", "student-int4"):
        for figure_id in PLOTS:
            assert colors[name] in _figure(page, figure_id), (name, figure_id)
    for figure_id in PLOTS:  # the failed target is left out of the plots
        assert colors["offline"] not in _figure(page, figure_id)
        assert "offline" not in _figure(page, figure_id).split("<figcaption>")[0]


def test_quality_cells_carry_retention_and_the_verdict_leads(page):
    assert "60.0% <span" in page and "(83%)" in page  # student's accuracy and its retention, one cell
    assert page.index("FAIL") < page.index("<h2>Quality</h2>")
    assert "retention of accuracy 0.410 &lt; min 0.500" in page


def test_a_failed_target_is_greyed_out_with_its_reason_in_both_tables(page):
    rows = re.findall(r'<tr class="failed">.*?</tr>', page)
    assert len(rows) == 2 and all("offline" in row and "connection refused" in row for row in rows)


def test_names_and_reasons_are_escaped():
    doc = sample_document()
    doc["targets"][0]["name"] = doc["reference"] = "<script>alert(1)</script>"
    doc["targets"][3]["reason"] = "<b>bad</b> & worse"
    doc["targets"][2]["notes"] = ['"quoted" <i>note</i>']
    page = render_html(doc)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;bad&lt;/b&gt; &amp; worse" in page and "&lt;i&gt;note&lt;/i&gt;" in page


def test_no_gate_no_sweep_and_only_failed_targets_still_render():
    doc = sample_document()
    doc["verdict"] = {"evaluated": False, "passed": False, "reasons": ["no gate configured"]}
    doc["concurrency_levels"] = []
    for target in doc["targets"]:
        target.pop("sweep", None)
    page = render_html(doc)
    assert "NO GATE" in page and "Throughput under load" not in page
    assert all(f'<figure id="{figure_id}">' in page for figure_id in PLOTS)

    doc = sample_document()
    doc["targets"] = [doc["targets"][3]]
    page = render_html(doc)
    assert "connection refused" in page and all(
        f'<figure id="{figure_id}"><svg' in page for figure_id in PLOTS
    )


def test_a_passing_gate_is_a_pass_badge():
    doc = sample_document()
    doc["verdict"] = {
        "evaluated": True,
        "passed": True,
        "reasons": ["student-int4: ok: retention 0.9 >= 0.5"],
    }
    page = render_html(doc)
    assert '<section class="verdict pass"><div class="badge">PASS</div>' in page
