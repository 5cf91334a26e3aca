"""The report: charts embedded as PNG data URIs, rendered by headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ragtune.eval.report import write_report
from tests.eval.synthetic import VARIANTS, make_run

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (apt-get install -y chromium; "
    "scripts/setup.sh --dev installs it, as in CI)",
)
DATA_IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


@pytest.fixture
def report(tmp_path: Path) -> Path:
    out = tmp_path / "run-synthetic"
    summary, recs, items = make_run(out)
    _, html = write_report(out, summary, recs, items, VARIANTS)
    return html


def test_html_is_self_contained_with_png_charts(report: Path) -> None:
    html = report.read_text()
    imgs = DATA_IMG.findall(html)
    assert len(imgs) == 3
    for _, data in imgs:
        png = base64.b64decode(data)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    assert 'src="plots/' not in html and "http" not in html.split("<pre>")[0]
    assert "Winner on token F1: hybrid:raft" in html
    assert 'id="disagreements"' in html


def test_markdown_report_links_plots(report: Path) -> None:
    md = (report.parent / "report.md").read_text()
    for name in ("metrics.png", "latency.png", "recall_at_k.png"):
        assert f"](plots/{name})" in md
        assert (report.parent / "plots" / name).stat().st_size > 0
    assert "| hybrid:raft |" in md and "## Paired differences" in md


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@needs_chromium
def test_chromium_decodes_every_chart(report: Path, tmp_path: Path) -> None:
    # Chromium reports each image's decoded size into the DOM; --dump-dom prints it.
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.addEventListener('load', () => document.body.setAttribute("
        "'data-imgs', JSON.stringify([...document.images].map("
        "i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]))));</script></body>"
    )
    probe.write_text(report.read_text().replace("</body>", script))
    res = _chromium("--dump-dom", probe.as_uri())
    m = re.search(r"data-imgs=\"([^\"]*)\"", res.stdout)
    assert m, res.stderr[-2000:]
    imgs = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(imgs) == 3
    for alt, complete, w, h in imgs:
        assert complete and w > 300 and h > 200, alt


@needs_chromium
def test_chromium_screenshot_is_not_blank(report: Path, tmp_path: Path) -> None:
    from PIL import Image

    shot = tmp_path / "shot.png"
    res = _chromium("--window-size=1200,2400", f"--screenshot={shot}", report.as_uri())
    assert shot.is_file() and shot.stat().st_size > 0, res.stderr[-2000:]
    img = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert img.size == (1200, 2400)
    # the chart region (below the tables) holds many colours, not a white page
    colors = img.crop((0, 600, 1200, 2400)).getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 100
    gray = img.convert("L")
    dark = sum(gray.histogram()[:200])
    assert dark / (1200 * 2400) > 0.02
