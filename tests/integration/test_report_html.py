"""The evaluation's HTML page rendered by headless Chromium: its plots are really drawn.

Chromium is Debian's package, which `make setup` installs where it is missing
(scripts/install_chromium.sh); this test is not skipped without it.
"""

from __future__ import annotations

import pytest
from PIL import Image

from slmops.evaluation.html import PALETTE, render_html
from slmops.testing.browser import dump_dom, screenshot
from slmops.testing.report_sample import sample_document

pytestmark = pytest.mark.integration


def _near(pixel: tuple[int, ...], color: str, tolerance: int = 40) -> bool:
    want = tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], want))


def test_the_report_renders_with_its_plots_in_chromium(tmp_path):
    page = tmp_path / "report.html"
    page.write_text(render_html(sample_document()))

    dom = dump_dom(page)
    for figure_id in ("plot-quality-size", "plot-latency", "plot-throughput"):
        assert f'id="{figure_id}"' in dom
        figure = dom.split(f'id="{figure_id}"', 1)[1].split("</figure>", 1)[0]
        assert "<svg" in figure and ("<path" in figure or "<use" in figure)
    assert "connection refused" in dom and "FAIL" in dom

    png = screenshot(page, tmp_path / "report.png", width=1280, height=3600)
    image = Image.open(png).convert("RGB")
    assert image.size == (1280, 3600)
    pixels = list(image.get_flattened_data())
    assert len(set(pixels)) > 500, "the page looks blank"
    # Every measured target's colour is drawn (markers, boxes, lines): the plots rendered.
    for color in PALETTE[:3]:
        drawn = sum(1 for p in pixels[::3] if _near(p, color))
        assert drawn > 300, f"colour {color} barely appears ({drawn} pixels)"
    # The plots sit below the tables: their lower half of the page is not empty.
    lower = image.crop((0, 1000, 1280, 3000))
    assert len(set(lower.get_flattened_data())) > 200
