"""Remake docs/web.png: the page of ``crackclf serve`` showing the crack map of a real photo.

    python docs/web_screenshot.py [--model models/model.keras] [--photo PHOTO.jpg] [--out docs/web.png]

Starts ``crackclf serve`` on a free loopback port, opens its page in Debian's headless
Chromium (Playwright for Python; ``playwright install`` is not needed), chooses the photo
as a user would, waits until its crack map has loaded, and saves the page. The README's picture
shows a 908x681 mosaic of 12 real patches of the dataset (CC BY 4.0, cited in the README), made
from ../shared/data/crack-sample; the default photo is one of ../shared/data/photos/uav75 (real
drone photos, GPL-3.0: fine to look at, not to commit). Prints how long the page took from upload
to map.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "docs")]
from crackserve import serving  # noqa: E402
from screenshot import CHROMIUM_ARGS, find_chromium  # noqa: E402

DEFAULT_PHOTO = ROOT.parent / "shared" / "data" / "photos" / "uav75" / "images" / "DSC00566b.jpg"


def small_png(shot: bytes, out: Path) -> None:
    """The screenshot in 256 colours (flat page, grey photo, red map: no visible loss, half the bytes)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(shot)) as img:
        img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            out, optimize=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "model.keras"), help="a .keras file or models:/ URI")
    ap.add_argument("--photo", type=Path, action="append", help="photo to upload (repeat for more)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "web.png")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=1300)
    opts = ap.parse_args()
    photos = opts.photo or [DEFAULT_PHOTO]
    for photo in photos:
        if not photo.is_file():
            sys.exit(f"web_screenshot: {photo} not found (pass --photo)")
    exe = find_chromium()
    if exe is None:
        sys.exit("web_screenshot: chromium not found (apt-get install chromium)")

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, serving(opts.model, Path(tmp) / "serve.log", timeout=300) as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": opts.width, "height": opts.height}, device_scale_factor=1)
        page.set_default_timeout(300_000)
        page.goto(url)
        page.wait_for_function("document.getElementById('model').textContent.includes('threshold')")
        start = time.monotonic()
        page.set_input_files("#files", [str(p) for p in photos])
        page.wait_for_function(f"document.querySelectorAll('.card[data-state=done], .card[data-state=error]')"
                               f".length === {len(photos)}")
        took = time.monotonic() - start
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        shot = page.screenshot(full_page=True)
        summary = page.eval_on_selector_all(".card", "cs => cs.map(c => c.dataset.name + ': ' + "
                                            "c.querySelector('.verdict').innerText + ', ' + "
                                            "c.querySelector('.counts').innerText)")
        browser.close()
    small_png(shot, opts.out)
    print(f"wrote {opts.out}; upload to map {took:.1f} s")
    for line in summary:
        print(" ", line)


if __name__ == "__main__":
    main()
