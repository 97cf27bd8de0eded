"""Remake docs/mlflow-compare.png: the MLflow UI comparing the latest runs, in headless Chromium.

    python docs/screenshot.py [--store sqlite:///mlflow.db] [--experiment crackclf] [--runs 2]

Needs Debian's chromium (`apt-get install chromium`). Starts `mlflow server` on a free
loopback port over the store, opens the run comparison page, and saves a PNG.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from mlflow_server import mlflow_server  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--force-device-scale-factor=1",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", default=f"sqlite:///{ROOT / 'mlflow.db'}", help="MLflow backend store URI")
    ap.add_argument("--experiment", default="crackclf")
    ap.add_argument("--runs", type=int, default=2, help="compare the latest N finished runs")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "mlflow-compare.png")
    ap.add_argument("--size", default="1600,1400", help="window width,height in px")
    args = ap.parse_args()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=args.store)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        sys.exit(f"screenshot: no experiment {args.experiment!r} in {args.store}")
    runs = client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=args.runs)
    if len(runs) < 2:
        sys.exit("screenshot: need at least two finished runs to compare")
    ids = [r.info.run_id for r in runs]
    query = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp.experiment_id])})
    with tempfile.TemporaryDirectory() as tmp, mlflow_server(Path(tmp), backend_uri=args.store) as url:
        page = f"{url}/#/compare-runs?{query}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={tmp}/chrome", f"--window-size={args.size}",
             "--virtual-time-budget=25000", f"--screenshot={args.out}", page],
            check=True, capture_output=True, timeout=180,
        )
    print(f"wrote {args.out} ({len(ids)} runs: {', '.join(r.info.run_name for r in runs)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
