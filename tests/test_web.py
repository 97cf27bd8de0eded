"""The page of ``crackclf serve`` in a real browser: Debian's Chromium driven by Playwright.

A person's path: open the page, choose a photo and a text file, wait for the crack map and
the error, read the verdict and counts, and find them equal to ``crackclf predict``'s on
the same photo. Also on a phone-sized screen: nothing wider than the screen.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import sys
from pathlib import Path

import pytest
import requests

import crackserve
from workspace import crackclf

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))
from screenshot import CHROMIUM_ARGS, find_chromium  # noqa: E402 - docs/screenshot.py

CHROMIUM = find_chromium()
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium); CI installs it",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory) -> str:
    with crackserve.serving(tiny_model_path, tmp_path_factory.mktemp("web") / "serve.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM or shutil.which("chromium"), headless=True,
                                     args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def test_upload_shows_the_map_and_the_counts_of_crackclf_predict(server, browser, tiny_model_path, tmp_path):
    photo = tmp_path / "wall.jpg"
    photo.write_bytes(crackserve.jpeg(crackserve.photo()))
    notes = tmp_path / "notes.txt"
    notes.write_text("inspection notes, not a photo\n")

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(server)
    page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
    page.set_input_files("#files", [str(photo), str(notes)])
    done = page.locator('.card[data-name="wall.jpg"][data-state="done"]')
    failed = page.locator('.card[data-name="notes.txt"][data-state="error"]')
    done.wait_for()
    failed.wait_for()

    assert "not a readable image" in failed.locator(".error").inner_text()
    assert done.locator("img.map").evaluate("img => img.complete && img.naturalWidth") == 1600
    shown = {"label": done.locator(".label").inner_text().lower().replace(" ", "_"),
             "tiles": done.locator(".tiles").inner_text(), "crack_tiles": done.locator(".crack-tiles").inner_text()}

    cli = crackclf(tmp_path, "predict", photo, "--model", tiny_model_path)
    assert cli.returncode == 0, cli.stderr
    (row,) = csv.DictReader(io.StringIO(cli.stdout))
    assert shown == {"label": row["label"], "tiles": row["tiles"], "crack_tiles": row["crack_tiles"]}
    assert int(row["tiles"]) > 1
    assert f"{float(row['probability']) * 100:.0f} %" in done.locator(".prob").inner_text()

    # The download links fetch the map and the tile table of this photo.
    csv_url = done.locator("a.csv").get_attribute("href")
    tiles = list(csv.DictReader(io.StringIO(requests.get(server + csv_url, timeout=30).text)))
    assert len(tiles) == int(row["tiles"]) and sum(t["label"] == "crack" for t in tiles) == int(row["crack_tiles"])
    png = requests.get(server + done.locator("a.png").get_attribute("href"), timeout=30)
    assert png.headers["content-type"] == "image/png"
    page.close()


def test_readable_on_a_phone(server, browser, tmp_path):
    photo = tmp_path / "wall.jpg"
    photo.write_bytes(crackserve.jpeg(crackserve.photo(seed=5)))
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    page.set_default_timeout(60_000)
    page.goto(server)
    page.set_input_files("#files", [str(photo)])
    page.locator('.card[data-state="done"]').wait_for()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # no sideways scrolling
    box = page.locator("img.map").bounding_box()
    assert box["width"] > 300 and box["x"] >= 0 and box["x"] + box["width"] <= 390
    font = page.evaluate("parseFloat(getComputedStyle(document.querySelector('.verdict')).fontSize)")
    assert font >= 14
    page.close()
