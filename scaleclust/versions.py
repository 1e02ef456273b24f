"""Versions of a run's results: RUN/versions/V/ beside the current state, and a pointer moved last.

```
RUN/versions/V/manifest.json   written last in V: model id, shards {SHARD: assignments file, rows,
                               embeddings commit}, counts, cluster sizes, parent, refit, created
RUN/versions/V/clusters.parquet  a copy of the clusters at V (small)
RUN/versions/V/drift.json      drift of V's new rows against the parent (not in the first version)
RUN/versions/V/id_map.json     on a refit: old -> new cluster ids (matched, new, retired)
RUN/versions/V/decision.json   the update's recorded decisions, so a killed update resumes them
RUN/versions/LATEST.json       {"version": V}, written after V is complete
RUN/models/MODEL/              every model a version names (model.json last, centroids.npy | head.pt +
                               subspaces.npy, novelty.npz), so an old version keeps its model
```

V is `NNNNN-YYYYMMDDTHHMMSSZ` (sequence number, then the UTC time it started): sortable and dated. A
version references the assignment files of its shards (assignments/SHARD.MODEL.COMMIT.parquet, never
rewritten), so an unchanged shard costs a line in the manifest, not a copy. A folder without
manifest.json is an update in progress (or killed); readers ignore it.
"""
from __future__ import annotations

import time
from typing import Any

from scaleclust.rundir import RunDir
from scaleclust.storage import copy_file, listdir, remove

POINTER = "LATEST.json"


class Versions:
    """The versions/ folder of one run directory."""

    def __init__(self, run: RunDir) -> None:
        self.run = run

    def path(self, version: str, name: str = "") -> str:
        return self.run.path("versions", version, name) if name else self.run.path("versions", version)

    def names(self) -> list[str]:
        """Every version folder, complete or not, oldest first."""
        return sorted(n for n in listdir(self.run.path("versions"), self.run.storage) if n[:5].isdigit())

    def manifest(self, version: str) -> dict[str, Any] | None:
        return self.run.marker(self.path(version, "manifest.json"))

    def complete(self) -> list[dict[str, Any]]:
        """Manifests of the complete versions, oldest first."""
        return [m for m in (self.manifest(v) for v in self.names()) if m is not None]

    def latest(self) -> dict[str, Any] | None:
        """The manifest the pointer names (None before the first version)."""
        pointer = self.run.marker(self.run.path("versions", POINTER))
        return self.manifest(pointer["version"]) if pointer else None

    def recover(self) -> tuple[dict[str, Any] | None, str | None]:
        """After a killed update: move the pointer to a complete version it had not reached yet, and
        return (latest manifest, the newest unfinished version folder if it continues from latest)."""
        latest = self.latest()
        unfinished = None
        for version in self.names():
            if latest and version <= latest["version"]:
                continue
            manifest = self.manifest(version)
            if manifest is not None:
                self.point(version)
                latest, unfinished = manifest, None
            else:
                unfinished = version
        if unfinished is not None:
            decision = self.run.marker(self.path(unfinished, "decision.json"))
            if decision is None or decision.get("parent") != (latest or {}).get("version"):
                remove(self.path(unfinished), self.run.storage, recursive=True)
                unfinished = None
        return latest, unfinished

    def start(self, latest: dict[str, Any] | None) -> str:
        """The name of a new version after `latest`."""
        seq = int(latest["version"][:5]) + 1 if latest else 1
        return f"{seq:05d}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"

    def point(self, version: str) -> None:
        self.run.write_json(self.run.path("versions", POINTER), {"version": version})

    def archive_model(self, model: dict[str, Any], files: list[str]) -> str:
        """Copy the committed model/ files into models/MODEL/ once (model.json last); returns the folder."""
        folder = self.run.path("models", model["model_id"])
        if not self.run.exists(self.run.path("models", model["model_id"], "model.json")):
            for name in files:
                copy_file(self.run.model(name), self.run.path("models", model["model_id"], name), self.run.storage)
            self.run.write_json(self.run.path("models", model["model_id"], "model.json"), model)
        return folder

    def prune(self, keep: int) -> dict[str, list[str]]:
        """Remove the complete versions older than the newest `keep` (never the latest), then the assignment
        files and archived models that no kept version and not the current state (assignments/ markers,
        model/) reference. Each version's manifest.json goes first, so a prune killed midway leaves folders
        that readers already ignore, and the next prune finishes them. Returns what was removed."""
        latest = self.latest()
        if latest is None:
            return {"versions": [], "assignments": [], "models": []}
        versions = self.complete()
        kept = [m for m in versions if m["version"] >= latest["version"]]  # the latest and any newer
        older = [m for m in versions if m["version"] < latest["version"]]
        kept += older[max(0, len(older) - (keep - 1)):] if keep > 1 else []
        names = {m["version"] for m in kept}
        gone = [v for v in self.names() if v not in names and v < latest["version"]]
        for version in gone:
            remove(self.path(version, "manifest.json"), self.run.storage)
            remove(self.path(version), self.run.storage, recursive=True)
        files = {e["file"] for m in kept for e in m["shards"].values()}
        files |= {m["file"] for m in self.run.committed("assignments").values()}
        stale = [n for n in listdir(self.run.path("assignments"), self.run.storage)
                 if n.endswith(".parquet") and not n.startswith(".") and n not in files]
        for name in stale:
            remove(self.run.path("assignments", name), self.run.storage)
        models = {m["model"] for m in kept} | {(self.run.marker(self.run.model("model.json")) or {}).get("model_id")}
        unused = [n for n in listdir(self.run.path("models"), self.run.storage) if n not in models]
        for model in unused:
            remove(self.run.path("models", model, "model.json"), self.run.storage)
            remove(self.run.path("models", model), self.run.storage, recursive=True)
        return {"versions": gone, "assignments": stale, "models": unused}

    def latest_drift(self) -> tuple[str, dict[str, Any], dict[str, Any] | None] | None:
        """The newest update's drift: (version, drift.json, decision.json) of the newest version folder
        that holds a drift report (the latest version, or the update writing one now); None before the
        first update that had a parent."""
        for version in reversed(self.names()):
            drift = self.run.marker(self.path(version, "drift.json"))
            if drift is not None:
                return version, drift, self.run.marker(self.path(version, "decision.json"))
        return None
