"""The report of a large run: its size on disk and how long Chromium takes to open it and to re-sort
and filter its clusters. The run is written straight into a run directory (synthetic embeddings and
assignments, tests/report_runs.py) with one real WebDataset shard whose images become the thumbnails.

    PYTHONPATH=. .venv/bin/python benchmarks/report_scale.py --rows 1000000 --clusters 10000

Prints one JSON line per measurement.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import ray  # noqa: E402

from scaleclust.stages import report  # noqa: E402
from tests.browser import visit  # noqa: E402
from tests.report_runs import build_run  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--clusters", type=int, default=10_000)
    parser.add_argument("--image-rows", type=int, default=2000, help="rows of the one real image shard")
    parser.add_argument("--max-mb", type=float, default=20.0, help="the size docs/measurements.md states as the bound")
    parser.add_argument("--max-open-s", type=float, default=10.0, help="the opening time docs/measurements.md states as the bound")
    parser.add_argument("--keep", help="write the run here and keep it (default: a temp dir, removed)")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="report-scale-"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        started = time.perf_counter()
        cfg, run, shards = build_run(root, n_shards=args.shards, rows_per_shard=args.rows // args.shards,
                                     k=args.clusters, image_shards=1, dim=32, image_rows=args.image_rows)
        emit(step="write synthetic run", rows=args.rows, clusters=args.clusters, seconds=round(time.perf_counter() - started, 1))
        started = time.perf_counter()
        result = report.run(cfg, run, shards)
        emit(step="report stage", seconds=round(time.perf_counter() - started, 1), clusters=result["clusters"],
             thumbnails=result["thumbnails"])
        folder = Path(result["report"]).parent
        sizes = {part: sum(p.stat().st_size for p in (folder / part).rglob("*") if p.is_file()) for part in ("img", "plots")}
        total_mb = (sum(sizes.values()) + result["html_bytes"]) / 2**20
        emit(step="report size", total_mb=round(total_mb, 2),
             html_mb=round(result["html_bytes"] / 2**20, 2), img_mb=round(sizes["img"] / 2**20, 2),
             plots_kb=round(sizes["plots"] / 1024, 1))

        def interact(page) -> dict:
            timings = {}
            for name, action in (("sort by confidence", lambda: page.select_option("#sort", "conf-asc")),
                                 ("filter min size 100", lambda: page.fill("#min-size", "100")),
                                 ("next page", lambda: page.click("#next"))):
                t0 = time.perf_counter()
                action()
                page.wait_for_function("document.querySelectorAll('section.cluster').length > 0")
                timings[name] = round(time.perf_counter() - t0, 3)
            return timings

        seen = visit(Path(result["report"]), then=interact)
        emit(step="open in chromium", seconds_to_rendered_and_images_loaded=round(seen.load_seconds, 2),
             sections_on_page=len(seen.sections), images=len(seen.images),
             images_broken=sum(1 for i in seen.images if not i["naturalWidth"]), console_errors=len(seen.errors))
        emit(step="interactions (seconds)", **seen.dom)
        emit(step="within the stated bounds", size=total_mb < args.max_mb, open=seen.load_seconds < args.max_open_s)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
