"""The report's drift table: the newest nightly update's drift report (versions/V/drift.json) and its
refit decision, so whoever reads the report sees whether the new data still fits the clusters."""
from __future__ import annotations

from typing import Any

from scaleclust.rundir import RunDir
from scaleclust.versions import Versions


def _ids(ids: list[int]) -> str:
    return ", ".join(str(i) for i in ids) if ids else "none"


def drift_section(run: RunDir) -> dict[str, Any] | None:
    """The overview table {id, title, rows} of the newest update's drift; None when no update has one."""
    found = Versions(run).latest_drift()
    if found is None:
        return None
    version, drift, decision = found
    limits = drift["thresholds"]
    rows = [("version", version),
            ("drift score", f"{drift['score']:.3f} ({drift['status']}; warn at {limits['warn']}, refit at {limits['refit']})"),
            ("new rows", f"{drift['new_rows']:,}"),
            ("novel rows", f"{drift['novel_rows']:,} ({drift['novel_share']:.1%}) far from every cluster"),
            *([("fresh rows", f"{drift['fresh_share']:.1%} accepted by a cluster, in neighbourhoods only new rows fill")]
              if drift.get("fresh_share") is not None else []),
            ("low-confidence share", f"{drift['low_confidence_share']:.1%}"),
            ("total variation of shares", f"{drift['total_variation']:.3f}"),
            (f"grew (new share >= {limits['growth']}x fitted)", _ids(drift["grown"])),
            (f"shrank (new share <= 1/{limits['growth']} of fitted)", _ids(drift["shrunk"]))]
    if decision is not None:
        rows.append(("refit", f"{'yes' if decision['refit'] else 'no'}: {decision['reason']}"))
    return {"id": "drift", "title": f"drift of the latest update ({version}, against {drift['parent']})", "rows": rows}
