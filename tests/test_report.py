"""The report stage's page, opened in headless Chromium: every cluster section with its images, no
console errors, nothing fetched from outside the report folder, hostile text shown as text, and a
many-cluster run that stays small and usable (pages, sort, filter)."""
from __future__ import annotations

from pathlib import Path

import pytest

from scaleclust.stages import report
from scaleclust.sources.shard_writer import jpeg_bytes, sample_members
from tests.browser import Visit, visit
from tests.report_runs import build_run
from tests.shards import synthetic_image

pytestmark = [pytest.mark.usefixtures("ray_local", "chromium"), pytest.mark.timeout(300)]


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def assert_self_contained(seen: Visit, index: Path) -> None:
    """No uncaught error, no console error, and every request is a file under the report folder."""
    assert seen.errors == []
    assert [m for m in seen.console if m.startswith("error")] == []
    folder = index.parent.resolve().as_uri() + "/"
    assert seen.requests and all(url.startswith(folder) for url in seen.requests), seen.requests


def test_demo_size_report_shows_every_cluster_with_its_images(tmp_path: Path) -> None:
    cfg, run, shards = build_run(tmp_path, n_shards=10, rows_per_shard=500, k=10, image_shards=10)
    result = report.run(cfg, run, shards)
    index = Path(result["report"])
    shot = tmp_path / "report.png"
    seen = visit(index, shot, then=lambda page: {"per_section": page.eval_on_selector_all(
        "section.cluster", "els => els.map(e => e.querySelectorAll('img').length)")})

    assert sorted(seen.sections, key=int) == [str(c) for c in range(10)]
    # 6 nearest the centre + 3 borderline per cluster, each read back from its shard; + 3 plots
    assert seen.dom["per_section"] == [9] * 10
    assert len(seen.images) == 93 and result["thumbnails"] == 90
    assert all(image["naturalWidth"] > 0 for image in seen.images), [i for i in seen.images if not i["naturalWidth"]]
    assert_self_contained(seen, index)
    assert shot.stat().st_size > 20_000


HOSTILE_KEYS = ["<script>alert(1)</script>", "<img src=x onerror=alert(2)>", "javascript:alert(3)",
                "\"><svg onload=alert(4)>"]
HOSTILE_CAPTIONS = ["<script>alert(5)</script>", "<img src=\"http://127.0.0.1:9/x.png\" onerror=alert(6)>"]
HOSTILE_URLS = ["javascript:alert(7)", "JaVaScRiPt:alert(8)", "data:text/html,<script>alert(9)</script>"]


def hostile_samples(shard: int, rows: int) -> list[tuple[str, dict[str, bytes]]]:
    """Keys, captions and URLs written to run script if a page ever parsed them as HTML or followed them."""
    import numpy as np

    rng = np.random.default_rng(shard)
    samples = []
    for i in range(rows):
        key = HOSTILE_KEYS[i] if i < len(HOSTILE_KEYS) else f"plain{i:03d}"
        caption = HOSTILE_CAPTIONS[i % len(HOSTILE_CAPTIONS)]
        url = HOSTILE_URLS[i % len(HOSTILE_URLS)]
        samples.append((key, sample_members(key, jpeg_bytes(synthetic_image(i % 3, rng)), caption, {"url": url})))
    return samples


def test_hostile_keys_captions_and_urls_show_as_text(tmp_path: Path) -> None:
    name, runner_up = "<script>alert(10)</script>", "<img src=x onerror=alert(11)>"
    cfg, run, shards = build_run(tmp_path, n_shards=1, rows_per_shard=12, k=2, image_shards=1,
                                 samples=hostile_samples, names=[name, None], top_names=[[name, runner_up], []])
    index = Path(report.run(cfg, run, shards)["report"])
    html = index.read_text()
    assert "<script>alert" not in html and "<img src=x" not in html and "<svg" not in html  # all as \\u003c

    seen = visit(index, then=lambda page: {
        "text": page.inner_text("body"),
        "scripts": page.evaluate("document.scripts.length"),
        "bad_links": page.evaluate("Array.from(document.links).filter(a => !/^https?:$/.test(a.protocol)).length"),
        "injected": page.evaluate("document.querySelectorAll('svg, iframe, object, embed').length"),
        "img_srcs": page.eval_on_selector_all("img", "els => els.map(e => e.getAttribute('src'))"),
    })
    assert seen.dialogs == []  # no alert() ran
    for text in HOSTILE_KEYS + HOSTILE_CAPTIONS + HOSTILE_URLS + [name, runner_up]:
        assert text in seen.dom["text"], text
    assert seen.dom["scripts"] == 2  # the JSON data block and the page's own script
    assert seen.dom["bad_links"] == 0 and seen.dom["injected"] == 0
    assert all(src.startswith(("img/", "plots/")) for src in seen.dom["img_srcs"])
    assert_self_contained(seen, index)


def test_many_clusters_stay_small_and_browsable(tmp_path: Path) -> None:
    cfg, run, shards = build_run(tmp_path, n_shards=8, rows_per_shard=5000, k=1500, image_shards=1, dim=16,
                                 report={"image_clusters": 40})
    result = report.run(cfg, run, shards)
    index = Path(result["report"])

    def browse(page) -> dict:
        def sizes() -> list[int]:
            return page.eval_on_selector_all("section.cluster .meta span:first-child",
                                              "els => els.map(e => parseInt(e.textContent.replace(/,/g, '')))")
        found = {"count": page.inner_text("#count"), "first_page": sizes()}
        page.click("#next")
        found["second_page"] = sizes()
        page.fill("#min-size", "40")
        found["filtered"] = sizes()
        page.select_option("#sort", "conf-asc")
        found["conf_asc"] = page.eval_on_selector_all(
            "section.cluster .meta span:nth-child(2)", "els => els.map(e => parseFloat(e.textContent.split(' ').pop()))")
        page.fill("#min-size", "0")
        page.fill("#query", "cluster-that-does-not-exist")
        found["none"] = page.inner_text("#count")
        return found

    seen = visit(index, then=browse)
    clusters = result["clusters"]
    assert seen.dom["count"] == f"{clusters} of {clusters} clusters; page 1 of {-(-clusters // 50)}"
    first, second = seen.dom["first_page"], seen.dom["second_page"]
    assert len(first) == len(second) == 50 and first == sorted(first, reverse=True) and first[-1] >= second[0]
    assert seen.dom["filtered"] and min(seen.dom["filtered"]) >= 40
    assert seen.dom["conf_asc"] == sorted(seen.dom["conf_asc"])
    assert seen.dom["none"].startswith("0 of")
    assert all(image["naturalWidth"] > 0 for image in seen.images)
    assert_self_contained(seen, index)
    # thumbnails only for the 40 largest clusters; the page grows with clusters, not rows
    assert result["thumbnails"] <= 40 * 9
    assert folder_size(index.parent) < 3_000_000
