"""The report in a real browser: headless Chromium loads the page, its plots and its tables.

Each test writes a report of scripted run folders (:mod:`insitu.testing.run_folders`),
then lets Chromium (Debian package ``chromium``) open it twice: ``--dump-dom``
of a copy with a small probe script (the report itself has none) that records,
after the load event, each image's natural size, the task tables' rows and the
colours they are drawn in; and ``--screenshot`` of the page, checked for the
colours of the scripted banner and of the failed rows. Locally the tests skip
without Chromium; in CI (``CI=true``) a missing Chromium fails them.

``INSITU_REPORT_SCREENSHOTS=DIR`` keeps the screenshots in DIR to look at.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from insitu.report import PLOTS, SCRIPTED_BANNER, write_report
from insitu.testing.run_folders import sample_runs

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
#: Viewport: the report's width (1280 px) and margins, and tall enough for a whole
#: report of the sample runs (a headless screenshot shows the viewport only, and
#: one scrolled to an anchor comes out blank).
WINDOW = (1400, 11000)

#: CSS colours of the report (see insitu.report_html) as the screenshot shows them.
SCRIPTED_BANNER_RGB = (255, 243, 205)
FAILED_ROW_RGB = (251, 227, 229)

#: Runs after the load event (images decoded) and leaves its findings on <body>.
PROBE = """
<script>
window.addEventListener("load", () => {
  const style = (selector) => {
    const found = document.querySelector(selector);
    return found ? getComputedStyle(found).backgroundColor : null;
  };
  const findings = {
    title: document.title,
    images: [...document.images].map((i) => [i.naturalWidth, i.naturalHeight, i.complete]),
    blocks: [...document.querySelectorAll(".task-block")].map((block) => ({
      rows: block.querySelectorAll("tr[id]").length,
      classes: [...block.querySelectorAll("tr[id]")].map((r) => r.className),
    })),
    failedBackground: style("table.tasks tr.failed td"),
    okBackground: style("table.tasks tr.ok td"),
    attentionLinks: [...document.querySelectorAll("#attention a")]
      .map((a) => a.getAttribute("href"))
      .filter((href) => !document.getElementById(href.slice(1))),
    pageWidth: document.documentElement.scrollWidth,
    tablesScrolling: [...document.querySelectorAll(".scroll")]
      .filter((d) => d.scrollWidth > d.clientWidth).length,
  };
  // The CSS-only filter: ticking the box hides the rows that need no attention.
  const box = document.querySelector(".only-problems");
  if (box) {
    box.click();
    const block = box.closest(".task-block");
    findings.visibleAfterFilter = [...block.querySelectorAll("tr[id]")]
      .filter((r) => getComputedStyle(r).display !== "none")
      .map((r) => r.className);
  }
  document.body.setAttribute("data-probe", JSON.stringify(findings));
});
</script>
"""


def require_chromium() -> str:
    """The Chromium binary; skip without one (locally) or fail (in CI)."""
    if CHROMIUM is not None:
        return CHROMIUM
    reason = "chromium is not installed (apt-get install chromium)"
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def chromium(url: str, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on ``url``; fail the test with its stderr if it fails."""
    binary = require_chromium()
    command = [
        binary,
        "--headless",
        # Chromium refuses to run as root with its own sandbox; the page is ours.
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--force-device-scale-factor=1",
        f"--user-data-dir={work / 'chromium-profile'}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        *args,
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done


def probe(page: Path, work: Path) -> dict[str, Any]:
    """Load a copy of the page with :data:`PROBE` (next to it: same relative links)."""
    probed = page.with_name("probe-" + page.name)
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text, "the report should need no script"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(probed.as_uri(), work, "--dump-dom").stdout
    found = re.search(r'<body[^>]*\sdata-probe="([^"]*)"', dom)
    assert found, f"the probe did not run; DOM starts: {dom[:500]}"
    return json.loads(html.unescape(found.group(1)))


def screenshot(page: Path, work: Path, name: str) -> Image.Image:
    """A screenshot of the whole page, kept if asked to."""
    target = work / f"{name}.png"
    chromium(page.as_uri(), work, f"--screenshot={target}")
    keep = os.environ.get("INSITU_REPORT_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(keep) / target.name)
    image = Image.open(target).convert("RGB")
    assert image.size == WINDOW
    return image


def colour_share(image: Image.Image, rgb: tuple[int, int, int]) -> float:
    """Share of the image's pixels that are exactly ``rgb``."""
    counts = {colour: n for n, colour in image.getcolors(maxcolors=1 << 20) or []}
    return counts.get(rgb, 0) / (image.width * image.height)


def assert_not_blank(image: Image.Image) -> None:
    colours = image.getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 200, f"only {len(colours)} colours: a blank or unstyled page?"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two scripted runs (batch sizes 2 and 4) with failed, incomplete and wrong tasks."""
    require_chromium()
    return sample_runs(tmp_path_factory.mktemp("runs"))


@pytest.mark.parametrize("single_file", [True, False])
def test_single_run_report_in_chromium(
    sweep: list[Path], tmp_path: Path, single_file: bool
) -> None:
    page = write_report(sweep[:1], out_dir=tmp_path / "report", single_file=single_file)
    found = probe(page, tmp_path)
    assert found["title"] == "insitu report: insitu"  # the hostile task text ran no script
    assert len(found["images"]) == len(PLOTS)
    for width, height, complete in found["images"]:
        assert complete and width >= 800 and height >= 400, found["images"]
    (block,) = found["blocks"]
    assert block["rows"] == 16
    assert block["classes"][:4] == ["failed", "incomplete", "wrong", "wrong"]
    assert found["failedBackground"] == "rgb(251, 227, 229)"
    assert found["okBackground"] in ("rgba(0, 0, 0, 0)", "rgb(255, 255, 255)")
    assert found["attentionLinks"] == [], "links at the top that lead nowhere"
    assert found["visibleAfterFilter"] == ["failed", "incomplete", "wrong", "wrong"]
    assert found["pageWidth"] <= WINDOW[0], "the page scrolls sideways"
    assert found["tablesScrolling"] == 0, "the summary table is cut"

    shot = screenshot(page, tmp_path, "single-run" + ("" if single_file else "-linked"))
    assert_not_blank(shot)
    banner = shot.crop((0, 0, WINDOW[0], 400))
    assert colour_share(banner, SCRIPTED_BANNER_RGB) > 0.05, "no scripted banner at the top"
    assert colour_share(shot, FAILED_ROW_RGB) > 0.0005, "no failed row drawn in its colour"


def test_multi_run_report_in_chromium(sweep: list[Path], tmp_path: Path) -> None:
    page = write_report(sweep, out_dir=tmp_path / "report")
    text = page.read_text(encoding="utf-8")
    assert SCRIPTED_BANNER in text
    found = probe(page, tmp_path)
    assert len(found["images"]) == len(PLOTS)
    assert all(complete and width >= 800 for width, _, complete in found["images"])
    assert [b["rows"] for b in found["blocks"]] == [16, 16]
    assert all(b["classes"][0] == "failed" for b in found["blocks"])
    assert found["attentionLinks"] == []
    assert found["pageWidth"] <= WINDOW[0]
    assert found["tablesScrolling"] == 0
    assert "insitu B=2" in text and "insitu B=4" in text

    shot = screenshot(page, tmp_path, "multi-run")
    assert_not_blank(shot)
    assert colour_share(shot.crop((0, 0, WINDOW[0], 400)), SCRIPTED_BANNER_RGB) > 0.05
    assert colour_share(shot, FAILED_ROW_RGB) > 0.001, "no failed rows drawn in their colour"
