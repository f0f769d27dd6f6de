"""The HTML report page: self-contained, escaped, failed targets shown, one figure per plot."""

from __future__ import annotations

import re

from slmops.evaluation.html import render_html
from slmops.testing.report_sample import sample_document


def test_the_page_is_self_contained():
    page = render_html(sample_document())
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page.lower()
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert attribute.startswith("#"), attribute  # nothing outside the page
    assert "@import" not in page and "url(http" not in page


def test_three_plots_each_in_its_figure():
    page = render_html(sample_document())
    for figure_id in ("plot-quality-size", "plot-latency", "plot-throughput"):
        body = page.split(f'<figure id="{figure_id}">', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in body and "<figcaption>" in body


def test_a_failed_target_is_listed_with_its_reason_and_the_verdict_leads():
    page = render_html(sample_document())
    assert 'class="failed"' in page and "connection refused" in page
    assert page.index("FAIL") < page.index("<h2>Quality</h2>")
    assert "retention 0.405 &lt; min 0.500" in page
    assert "0.74" not in page or "74.0%" in page  # accuracy shown as a percentage


def test_names_and_reasons_are_escaped():
    doc = sample_document()
    doc["targets"][3]["name"] = "<script>alert(1)</script>"
    doc["targets"][3]["reason"] = "<b>bad</b>"
    page = render_html(doc)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;bad&lt;/b&gt;" in page


def test_no_gate_and_no_sweep_still_render():
    doc = sample_document()
    doc["verdict"] = {"evaluated": False, "passed": False, "reasons": []}
    doc["concurrency_levels"] = []
    for target in doc["targets"]:
        target.pop("sweep", None)
    page = render_html(doc)
    assert "NO GATE" in page and 'id="plot-throughput"' in page
