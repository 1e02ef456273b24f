"""Report stage: RUN/report/ = index.html (written last: the commit), plots/*.png, img/*.jpg.

Reads clusters.parquet, assignments/ + embeddings/ (one Ray task per shard; when a night only added
shards, only those, merged into RUN/report-picks.json: see collect), metrics.json and the markers;
reads back from the source shards only the thumbnails it shows that an earlier report did not write.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from scaleclust.config import Config
from scaleclust.tables import embedding_matrix
from scaleclust.progress import Progress
from scaleclust.report import plots
from scaleclust.report.collect import Member, Picks, collect
from scaleclust.report.drift import drift_section
from scaleclust.report.page import render
from scaleclust.report.thumbs import read_thumbnails, thumb_name
from scaleclust.rundir import RunDir
from scaleclust.runinfo import describe
from scaleclust.sources import ShardSpec
from scaleclust.storage import listdir, write_bytes_atomic
from scaleclust.stage import Stage

PAGE_SIZE = 50  # cluster sections per page


def index_url(run: RunDir) -> str:
    return run.path("report", "index.html")


def overview(run: RunDir, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """The overview tables, each {id, title, rows: [(name, value)]}. Later stages (drift) add theirs here."""
    info = describe(run)
    counts = metrics.get("counts", {})
    model = info["model"] or {}
    sections = [{"id": "run", "title": "run", "rows": [
        ("rows", f"{info['rows']:,}"), ("embedded", f"{info['embedded']:,}"),
        ("skipped", f"{sum(info['skipped'].values()):,}"),
        ("clusters", f"{counts.get('non_empty_clusters', '-')} non-empty of {model.get('k', '-')}"),
        ("method", model.get("method", "-")), ("encoder", info["encoder"] or "-"),
        ("fit sample", f"{model.get('sample_rows') or '-'} rows")]}]
    if info["skipped"]:
        sections.append({"id": "skipped", "title": "skipped rows by error type",
                         "rows": list(info["skipped"].items())})
    seconds = metrics.get("seconds", {})
    if seconds:
        rates = metrics.get("rows_per_second", {})
        sections.append({"id": "seconds", "title": "seconds per stage", "rows": [
            (stage, f"{s:,.1f} s" + (f" ({rates[stage]:,.0f} rows/s)" if rates.get(stage) else ""))
            for stage, s in seconds.items()]})
    labels = metrics.get("labels")
    if labels and labels.get("n"):  # no labelled rows: no scores
        sections.append({"id": "labels", "title": f"against '{labels['column']}' ({labels['n']:,} labelled rows)",
                         "rows": [("ACC", f"{labels['acc']:.3f}"), ("NMI", f"{labels['nmi']:.3f}"),
                                  ("ARI", f"{labels['ari']:.3f}"),
                                  ("many-to-one ACC", f"{labels['acc_many_to_one']:.3f}")]})
    drift = drift_section(run)
    if drift is not None:
        sections.append(drift)
    return sections


def thumbnails(run: RunDir, wanted: dict[str, set[str]], shards: dict[str, ShardSpec],
               cfg: Config) -> tuple[dict[str, str], int, int]:
    """Key -> thumbnail file (under report/) for the wanted keys (shard -> keys) that have an image, how
    many were read from the source shards (thumbnails an earlier report wrote are reused), and how many
    could not be made (an image that did not decode or could not be read again)."""
    px = cfg.report.thumbnail_px
    names = {key: thumb_name(key, px) for keys in wanted.values() for key in keys}
    present = {f"img/{name}" for name in listdir(run.path("report", "img"), run.storage)}
    missing = {shard: todo for shard, keys in wanted.items() if (todo := {k for k in keys if names[k] not in present})}
    read, failed = read_thumbnails(missing, shards, cfg.input, cfg.storage, px) if missing else ({}, 0)
    for key, jpeg in read.items():
        write_bytes_atomic(run.path("report", names[key]), jpeg, run.storage)
    return {key: name for key, name in names.items() if key in read or name in present}, len(read), failed


def _members(members: list[Member], thumbs: dict[str, str]) -> list[dict[str, Any]]:
    return [{"key": key, "conf": round(conf, 4), "thumb": thumbs.get(key), "caption": caption, "url": url}
            for conf, key, _, caption, url in members]


def cluster_rows(table: dict[str, Any], picks: Picks, thumbs: dict[str, str], deduped: bool,
                 n_captions: int) -> list[dict[str, Any]]:
    """One JSON-ready dict per non-empty cluster."""
    rows = []
    for c in np.flatnonzero(np.asarray(table["size"]) > 0):
        top = picks.top[c]
        shown = {m[1] for m in top}
        low = [m for m in picks.low[c] if m[1] not in shown]
        captions = list(dict.fromkeys(m[3] for m in top + low if m[3]))[:n_captions]
        score = table["name_score"][c]
        rows.append({"id": int(table["cluster"][c]), "size": int(table["size"][c]),
                     "conf": round(float(table["mean_confidence"][c]), 4), "name": table["name"][c] or None,
                     "score": None if score is None else round(float(score), 4),
                     "names": [n for n in (table["top_names"][c] or []) if n != table["name"][c]],
                     "dups": int(picks.duplicates[c]) if deduped else None,
                     "top": _members(top, thumbs), "low": _members(low, thumbs), "captions": captions})
    return rows


def run(cfg: Config, run: RunDir, shards: dict[str, ShardSpec]) -> dict[str, Any]:
    """Write RUN/report/; returns the page's URL and what it holds."""
    started = time.time()
    clusters = run.read_table(run.clusters)
    table = {name: clusters[name].to_pylist() for name in clusters.column_names if name != "centroid"}
    sizes = np.asarray(table["size"], np.int64)
    opts = cfg.report
    rows = int(sizes.sum())
    progress = Progress("report", total=rows, unit="rows")
    picks, deduped, shards_read = collect(run, np.asarray(table["cluster"], np.int64), opts.images, opts.borderline,
                                          progress)
    progress.close()

    wanted: dict[str, set[str]] = {}
    for c in np.argsort(-sizes, kind="stable")[:opts.image_clusters]:
        for _, key, shard, _, _ in picks.top[c] + picks.low[c]:
            wanted.setdefault(shard, set()).add(key)
    thumbs, read, failed = thumbnails(run, wanted, shards, cfg)

    labels = [name or str(c) for c, name in zip(table["cluster"], table["name"])]
    centroids = embedding_matrix(clusters["centroid"])
    confidence = np.asarray(table["mean_confidence"], np.float64)
    figures = {"sizes": plots.size_distribution(sizes), "confidence": plots.confidence_histogram(picks.hist),
               "map": plots.cluster_map(centroids, sizes, confidence, labels)}
    for name, png in figures.items():
        write_bytes_atomic(run.path("report", "plots", f"{name}.png"), png, run.storage)

    metrics = run.marker(run.metrics) or {}
    data = {"page_size": PAGE_SIZE, "thumbnail_px": opts.thumbnail_px,
            "clusters": cluster_rows(table, picks, thumbs, deduped, opts.captions)}
    named = any(table["name"])
    note = (f"Thumbnails for the {min(opts.image_clusters, len(data['clusters']))} largest clusters "
            f"(report.image_clusters); the others list keys, captions and URLs. "
            + ("" if named else "Clusters get names once the label stage has run. ")
            + ("" if deduped else "Near-duplicate counts appear once `scaleclust dedup` has run."))
    html = render({"title": run.url, "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "sections": overview(run, metrics), "cluster_note": note, "data": data,
                   "plots": [{"src": f"plots/{name}.png", "alt": alt} for name, alt in
                             (("sizes", "cluster-size distribution"), ("confidence", "confidence histogram"),
                              ("map", "2-D map of the clusters"))]})
    run.write_bytes(index_url(run), html.encode())  # the report's commit
    result = {"report": index_url(run), "clusters": len(data["clusters"]), "thumbnails": len(thumbs),
              "thumbnails_read": read, "thumbnails_failed": failed, "shards_read": shards_read,
              "html_bytes": len(html.encode()), "seconds": round(time.time() - started, 2)}
    run.write_marker(run.report_marker, result)
    return result


def status(run: RunDir) -> dict[str, Any]:
    """Committed when report/index.html exists."""
    return {"done": run.exists(index_url(run))}


STAGE = Stage("report", reads=("clusters.parquet", "assignments/", "embeddings/", "input shards (thumbnails)"),
              commits=("report/index.html", "report/report.json"),
              resources="one task per shard for its thumbnails",
              run=lambda ctx: run(ctx.cfg, ctx.run, ctx.shards), status=status)
