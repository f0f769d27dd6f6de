"""The evaluation's HTML page rendered by headless Chromium: it reads offline and its plots are drawn.

Chromium is Debian's package, which `make setup` installs where it is missing
(scripts/install_system_packages.sh); this test is not skipped without it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from slmops.evaluation.html import render_html, target_colors
from slmops.testing.browser import dump_dom, screenshot
from slmops.testing.report_sample import sample_document

pytestmark = pytest.mark.integration

PLOTS = ("plot-quality-size", "plot-latency", "plot-throughput")


def _pixels_near(image: np.ndarray, color: str, tolerance: int = 24) -> int:
    want = np.array([int(color[i : i + 2], 16) for i in (1, 3, 5)], dtype=np.int16)
    return int((np.abs(image.astype(np.int16) - want) <= tolerance).all(axis=-1).sum())


def test_the_report_renders_with_its_plots_in_chromium(tmp_path):
    doc = sample_document()
    page = tmp_path / "report.html"
    page.write_text(render_html(doc), encoding="utf-8")

    try:
        dom = dump_dom(page)
    except RuntimeError as exc:
        pytest.fail(f"{exc}\n(`make setup` installs Debian's chromium: scripts/install_system_packages.sh)")
    assert "<script" not in dom.lower()
    for attribute in re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', dom):
        assert attribute.startswith("#"), f"the page points outside itself: {attribute}"
    for figure_id in PLOTS:
        assert f'<figure id="{figure_id}">' in dom, figure_id
        figure = dom.split(f'<figure id="{figure_id}">', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in figure and "<path" in figure and "<figcaption>" in figure
    assert "FAIL" in dom
    assert "cannot reach http://127.0.0.1:9/v1: connection refused" in dom  # the failed target's reason

    png = screenshot(page, tmp_path / "report.png")
    image = np.asarray(Image.open(png).convert("RGB"))
    assert image.shape == (3000, 1280, 3)
    packed = (image[..., 0].astype(np.int32) << 16) | (image[..., 1].astype(np.int32) << 8) | image[..., 2]
    assert len(np.unique(packed)) > 500, "the page looks blank"
    # Every measured target's colour is drawn in the plots (markers, boxes, lines), not just
    # in the tables' small swatches (10 x 10 pixels each), and the failed one's is not.
    colors = target_colors(doc["targets"])
    for name in ("teacher", "student", "student-int4"):
        drawn = _pixels_near(image, colors[name])
        assert drawn > 1000, f"{name}'s colour {colors[name]} barely appears ({drawn} pixels)"
    assert _pixels_near(image, colors["offline"], tolerance=8) < 400  # its two swatches at most
