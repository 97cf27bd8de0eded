"""Remake docs/mlflow-compare.png: the MLflow UI comparing runs, taken in headless Chromium.

    python docs/screenshot.py                               # the latest 2 finished runs
    python docs/screenshot.py --run lr-1e-3 --run lr-3e-4   # runs by name (DVC experiment) or id

Needs Debian's ``chromium`` (``apt-get install chromium``) and Playwright for Python
(requirements-dev.txt), which drives that browser: ``playwright install`` is not needed
(it downloads browsers, and the network may be closed). Starts ``mlflow server`` on a
free loopback port over the store, opens the run comparison page with "Show diff only"
on (so the params that differ stand out), then the metric history page of the same
runs, and stacks both views into one PNG: params, metrics and tags side by side on
top, the per-epoch curves below.

The script waits for what it needs on the page (Playwright's ``wait_for_function``)
instead of guessing a delay.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mlflow_server import mlflow_server  # noqa: E402

# Offline and headless: no sandbox (containers, root), no GPU, nothing that calls home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--hide-scrollbars",
]
MAX_HEIGHT = 6000  # px: a page taller than this is cut


def find_chromium() -> str | None:
    """Debian's chromium: on PATH, else where the package puts it."""
    if found := shutil.which("chromium"):
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


class Browser:
    """One Playwright page in Debian's Chromium: JavaScript, waits, viewport size, screenshots."""

    def __init__(self, exe: str, width: int, height: int, timeout: float):
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
            self.page = self._browser.new_page(viewport={"width": width, "height": height}, device_scale_factor=1)
        except BaseException:
            self._playwright.stop()
            raise
        self.page.set_default_timeout(timeout * 1000)
        self.width = width

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def wait_for(self, expression: str, what: str, timeout: float) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(expression, timeout=timeout * 1000, polling=200)
        except PlaywrightTimeout:
            raise TimeoutError(f"the MLflow UI did not show {what} within {timeout:.0f} s") from None

    def sleep(self, seconds: float) -> None:
        self.page.wait_for_timeout(seconds * 1000)  # lets Playwright handle its events meanwhile

    def settle(self, quiet: float = 1.0, timeout: float = 15) -> None:
        """Wait until the page's text and layout stop changing (data loaded, charts drawn)."""
        probe = "(document.body?.innerText || '') + ' ' + document.querySelectorAll('svg *').length"
        deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
        while time.monotonic() < deadline:
            now = self.js(probe)
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            self.sleep(0.2)

    def resize(self, height: int) -> None:
        self.page.set_viewport_size({"width": self.width, "height": height})

    def fit_content(self, min_height: int) -> None:
        """Make the window as tall as the page's content (MLflow scrolls inside <main>), no taller."""
        self.resize(min_height)
        for _ in range(3):  # a taller window can re-flow the page: measure again
            height = self.js("Math.max(...Array.from(document.querySelectorAll('main'), "
                             "m => m.getBoundingClientRect().top + m.scrollHeight + 16), 0)")
            height = max(min_height, min(MAX_HEIGHT, int(height)))
            if height <= self.js("window.innerHeight"):
                return
            self.resize(height)
            self.settle(quiet=0.5)

    def open(self, url: str) -> None:
        self.page.goto(url, wait_until="domcontentloaded")

    def png(self) -> bytes:
        return self.page.screenshot(type="png")  # the viewport, sized by fit_content

    def close(self) -> None:
        try:
            self._browser.close()
        finally:
            self._playwright.stop()


METRICS_GRIDS = """Array.from(document.querySelectorAll('.du-bois-light-collapse-item'))
    .find(s => s.innerText.trim().startsWith('Metrics'))?.querySelectorAll('.ReactVirtualized__Grid') || []"""
CLOSE_ASSISTANT = """document.querySelector('[data-component-id="mlflow.assistant.chat_panel.close"]')?.click()"""
DIFF_ONLY = """document.querySelectorAll('button[aria-label$="Show diff only"][aria-checked="false"]')
    .forEach(b => b.click())"""


def scroll_metrics(browser: Browser, prefix: str) -> bool:
    """Scroll the comparison's metrics table (300 px high) to its first row named ``prefix...``.

    MLflow shows about ten metrics there, alphabetically: the test metrics are further
    down. The table is two virtualised grids, names and values, each scrolled here and
    checked to show the same rows. Returns whether it scrolled; raises if the grids disagree.
    """
    rows = (f"Array.from({METRICS_GRIDS}, "
            "g => Array.from(g.querySelectorAll('[style*=top]'), c => [c.offsetTop, c.innerText]))")
    if len(browser.js(rows)) != 2:
        return False  # no metrics table (runs without metrics), or MLflow drew it another way
    top = None
    for _ in range(20):  # the grid renders rows as it scrolls: step down until the row exists
        top = next((y for y, text in browser.js(rows)[0] if text.startswith(prefix)), None)
        if top is not None or not browser.js(f"(g => g && g.scrollTop + g.clientHeight < g.scrollHeight)"
                                             f"(({METRICS_GRIDS})[0])"):
            break
        browser.js(f"Array.from({METRICS_GRIDS}).forEach(g => g.scrollTop += 250)")
        browser.sleep(0.2)
    for target in ([top] if top is not None else []) + [0]:
        for i in (1, 0):  # values first, then names: each grid is scrolled on its own
            browser.js(f"(g => {{ g.scrollTop = {target}; g.dispatchEvent(new Event('scroll')); }})"
                       f"(({METRICS_GRIDS})[{i}])")
            browser.settle(quiet=0.4)
        tops = browser.js(f"Array.from({METRICS_GRIDS}, g => g.scrollTop)")
        first = next((t for y, t in sorted(browser.js(rows)[0]) if y >= (tops or [0])[0]), "")
        if len(set(tops)) <= 1 and (target != top or first.startswith(prefix)):
            return target == top
    raise RuntimeError("the metrics table's names and values could not be aligned")


def page_text_has(*texts: str) -> str:
    return "(t => " + " && ".join(f"t.includes({json.dumps(s)})" for s in texts) + ")(document.body?.innerText || '')"


def pick_runs(client, experiment_id: str, wanted: list[str], latest: int) -> list:
    """Runs named (run name or id) in ``wanted``, else the ``latest`` finished ones."""
    if not wanted:
        return client.search_runs([experiment_id], "attributes.status = 'FINISHED'",
                                  order_by=["attributes.start_time DESC"], max_results=latest)
    runs = []
    for key in wanted:
        found = client.search_runs([experiment_id], f"attributes.run_name = '{key}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if not found:
            found = client.search_runs([experiment_id], f"attributes.run_id = '{key}'")
        if not found:
            sys.exit(f"screenshot: no run named or with id {key!r} in experiment {experiment_id}")
        runs.append(found[0])
    return runs


def take(url: str, exe: str, experiment_id: str, ids: list[str], metrics: list[str], focus: str,
         width: int, timeout: float) -> list[bytes]:
    """PNGs of the run comparison and, if ``metrics``, of their per-epoch curves."""
    shots = []
    browser = Browser(exe, width, 1000, timeout)
    try:
        query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([experiment_id])})
        browser.open(f"{url}/#/compare-runs?{query}")
        browser.wait_for(page_text_has("Show diff only", *ids), "the run comparison", timeout)
        browser.wait_for("document.querySelector('.js-plotly-plot svg')", "the parallel coordinates plot", timeout)
        browser.js(CLOSE_ASSISTANT)
        browser.js(DIFF_ONLY)
        browser.settle()
        if focus:
            scroll_metrics(browser, focus)
        browser.fit_content(1000)
        shots.append(browser.png())

        if metrics:
            query = "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in {
                "runs": json.dumps(ids), "metric": json.dumps(metrics[0]), "experiments": json.dumps([experiment_id]),
                "plot_metric_keys": json.dumps(metrics), "plot_layout": "{}", "x_axis": "step",
                "y_axis_scale": "linear", "line_smoothness": "1", "show_point": "true", "deselected_curves": "[]",
                "last_linear_y_axis_range": "[]",
            }.items())
            browser.open(f"{url}/#/metric/?{query}")
            # one drawn line per run and metric
            browser.wait_for(f"document.querySelectorAll('.js-plotly-plot .scatterlayer .trace').length >= "
                             f"{len(ids) * len(metrics)}", "the metric curves", timeout)
            browser.js(CLOSE_ASSISTANT)
            browser.settle()
            browser.fit_content(700)
            shots.append(browser.png())
    finally:
        browser.close()
    return shots


def stack(pngs: list[bytes], out: Path) -> tuple[int, int]:
    """The screenshots one under the other, a grey rule between; written atomically."""
    from PIL import Image

    images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    gap = 6
    sheet = Image.new("RGB", (max(i.width for i in images),
                              sum(i.height for i in images) + gap * (len(images) - 1)), (200, 200, 200))
    y = 0
    for image in images:
        sheet.paste(image, (0, y))
        y += image.height + gap
    from crackclf.files import atomic_path

    with atomic_path(out) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return sheet.size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=f"sqlite:///{ROOT / 'mlflow.db'}", help="MLflow backend store URI")
    ap.add_argument("--experiment", default="crackclf", help="MLflow experiment (train.experiment_name)")
    ap.add_argument("--run", action="append", default=[], metavar="NAME_OR_ID",
                    help="a run to compare, by run name (the DVC experiment's) or id; repeat it")
    ap.add_argument("--latest", type=int, default=2, metavar="N", help="without --run: the latest N finished runs")
    ap.add_argument("--metrics", default="loss,val_loss",
                    help="comma-separated metrics whose per-epoch curves go below the table ('' for none)")
    ap.add_argument("--focus", default="test_", metavar="PREFIX",
                    help="scroll the comparison's metrics table to the first metric named so ('' for the top)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-compare.png")
    ap.add_argument("--width", type=int, default=1600, help="window width in px")
    ap.add_argument("--timeout", type=float, default=60, help="seconds to wait for each page")
    ap.add_argument("--chromium", default=find_chromium() or "chromium", help="the browser executable")
    args = ap.parse_args()

    exe = shutil.which(args.chromium)
    if not exe:
        sys.exit(f"screenshot: {args.chromium} not found (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        sys.exit("screenshot: needs Playwright for Python (pip install -r requirements-dev.txt)")
    import mlflow

    from crackclf import CrackclfError, tracking

    try:
        tracking.check_store(args.store)
    except CrackclfError as err:
        sys.exit(f"screenshot: {err}")

    client = mlflow.MlflowClient(tracking_uri=args.store)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        sys.exit(f"screenshot: no experiment {args.experiment!r} in {args.store}")
    runs = pick_runs(client, exp.experiment_id, args.run, args.latest)
    if len(runs) < 2:
        sys.exit("screenshot: need at least two finished runs to compare")
    ids = [r.info.run_id for r in runs]
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp), backend_uri=args.store) as url:
        shots = take(url, exe, exp.experiment_id, ids, metrics, args.focus, args.width, args.timeout)
    width, height = stack(shots, args.out)
    names = ", ".join(f"{r.info.run_name} ({r.info.run_id[:8]})" for r in runs)
    print(f"wrote {args.out} ({width}x{height} px): {names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
