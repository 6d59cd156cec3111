"""The Pareto page and the study report render in headless Chromium, offline, without JS errors."""

import os
import shutil

import pytest

from conftest import run_cli

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def pages(micro_study, tmp_path_factory):
    results, name = micro_study
    out = tmp_path_factory.mktemp("pages")
    for command in ("pareto", "report"):
        done = run_cli("search.cli", command, name, "--out", str(out / f"{command}.html"), "--results", str(results))
        assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("page, min_plots", [("pareto.html", 2), ("report.html", 4)])
def test_page_renders_offline_without_errors(pages, page, min_plots, tmp_path):
    from playwright.sync_api import sync_playwright

    assert os.path.exists(CHROMIUM), "Debian's chromium is needed (the CI setup installs it)"
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(f"file://{pages / page}")
        tab.wait_for_selector(".main-svg", timeout=20_000)
        plots = tab.locator(".js-plotly-plot").count()
        markers = tab.locator(".scatterlayer .point, .barlayer .point").count()
        shot = tmp_path / "shot.png"
        tab.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith("file://")] == []
    assert plots >= min_plots and markers > 0
    from PIL import Image

    pixels = Image.open(shot).convert("L").getextrema()
    assert pixels[0] < 128 < pixels[1]  # not a blank page
