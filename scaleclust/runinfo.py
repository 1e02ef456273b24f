"""What a run directory holds, read from its markers: committed stages, shard counts, skipped rows by
error type, the model. Used by `scaleclust info RUN` and by the report's overview; starts no Ray."""
from __future__ import annotations

from collections import Counter
from typing import Any

from scaleclust.failures import error_type
from scaleclust.rundir import RunDir


def skipped_by_type(run: RunDir, markers: dict[str, dict[str, Any]]) -> Counter[str]:
    """Skipped rows by error type over committed shards: from each marker's `error_types`, or, for
    markers written before that field existed, from the shard's errors/ file."""
    counts: Counter[str] = Counter()
    for shard, marker in markers.items():
        if "error_types" in marker:
            counts.update(marker["error_types"])
        elif marker.get("errors"):
            counts.update(error_type(e) for e in run.read_table(run.errors(shard), ["error"])["error"].to_pylist())
    return counts


def describe(run: RunDir) -> dict[str, Any]:
    """What `scaleclust info` prints besides each stage's status (scaleclust.pipeline.status), as one dict."""
    run.require()
    markers = run.committed("embeddings")
    model = run.marker(run.model("model.json"))
    return {
        "run_dir": run.url,
        "rows": sum(m["rows"] for m in markers.values()),
        "embedded": sum(m["embedded"] for m in markers.values()),
        "skipped": dict(skipped_by_type(run, markers).most_common()),
        # fallbacks that kept rows but took another path: counted so that none is silent
        "fallbacks": {"decode_on_cpu": sum(m.get("decode_fallbacks", 0) for m in markers.values()),
                      "thumbnails_failed": (run.marker(run.report_marker) or {}).get("thumbnails_failed", 0)},
        "encoder": next((m["model"] for m in markers.values()), None),
        "model": {k: model.get(k) for k in ("method", "k", "dim", "sample_rows", "model_id")} if model else None,
        "seconds": (run.marker(run.metrics) or {}).get("seconds", {}),
    }
