"""Check the run directory's invariants (see docs/run-directory.md):

- every input shard is committed, and its embeddings + errors rows equal its marker's row count;
- each sample of a shard appears exactly once in that shard's embeddings ∪ errors (with `deep`, the
  shards are re-read and their keys compared as multisets: a key the input repeats is embedded once and
  its repeats are errors);
- each embedded key is unique across the dataset (a key that the input repeats in several shards is
  embedded once and recorded as DuplicateKey in the other shards' errors);
- each embedded key appears exactly once in assignments;
- no shard holds failures that may pass (a read that failed, a missing object: see scaleclust.failures);
  errors that are facts about the data (corrupt image, bad tar) are expected and not problems.
- the latest version (or the one asked for) is whole: its model is archived, each shard's assignments
  file exists and holds exactly that shard's embedded keys, its rows and cluster sizes add up.
Runs in one process, shard by shard; keys are held as 64-bit hashes for the cross-shard check.
"""
from __future__ import annotations

import hashlib
import numpy as np

from scaleclust.config import StorageConfig
from scaleclust.failures import reasons, retryable_rows
from scaleclust.rundir import RunDir
from scaleclust.stage import recorded
from scaleclust.sources import describe, shard_keys
from scaleclust.versions import Versions


def _hashes(keys: list[str]) -> np.ndarray:
    return np.asarray([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys],
                      dtype=np.uint64)


def verify_version(run: RunDir, version: str) -> list[str]:
    """Problems of one version (see the module docstring)."""
    history = Versions(run)
    manifest = history.manifest(version)
    if manifest is None:
        return [f"version {version}: no versions/{version}/manifest.json (not a complete version)"]
    problems = []
    if not run.exists(run.path(manifest["model_dir"], "model.json")):
        problems.append(f"version {version}: its model {manifest['model_dir']} is missing")
    embedded = run.committed("embeddings")
    rows = 0
    for shard, entry in sorted(manifest["shards"].items()):
        url = run.path("assignments", entry["file"])
        if not run.exists(url):
            problems.append(f"version {version}: shard {shard}: assignments/{entry['file']} is missing")
            continue
        got = run.read_table(url, ["key"])["key"].to_pylist()
        rows += len(got)
        if embedded.get(shard, {}).get("commit") != entry["embed_commit"]:
            problems.append(f"version {version}: shard {shard}: embeddings were re-committed since")
            continue
        keys = run.read_table(run.embeddings(shard), ["key"])["key"].to_pylist()
        if len(got) != len(set(got)) or set(got) != set(keys) or len(got) != entry["rows"]:
            problems.append(f"version {version}: shard {shard}: {entry['file']} does not hold exactly the "
                            f"embedded keys ({len(got)} rows, {len(set(got) ^ set(keys))} differ)")
    sizes = sum(manifest["sizes"].values())
    if not (rows == manifest["rows"] == sizes):
        problems.append(f"version {version}: {rows} assigned rows on disk, manifest says {manifest['rows']}, "
                        f"cluster sizes add to {sizes}")
    return problems


def verify(url: str, storage: StorageConfig | None = None, deep: bool = False,
           version: str | None = None) -> list[str]:
    """Return the list of violated invariants (empty when the run is consistent)."""
    probe = RunDir(url, storage or StorageConfig())
    if not probe.exists(probe.config):
        return [f"{url}: no config.yaml; not a run directory"]
    ctx = recorded(url, storage)
    cfg, run, shards = ctx.cfg, ctx.run, ctx.shards
    problems: list[str] = []
    embedded = run.committed("embeddings")
    assigned = run.committed("assignments")
    seen: list[np.ndarray] = []
    for shard, spec in sorted(shards.items()):
        marker = embedded.get(shard)
        if marker is None:
            problems.append(f"shard {shard} ({describe(spec)}): not committed (no embeddings/{shard}.done.json)")
            continue
        keys = run.read_table(run.embeddings(shard), ["key"])["key"].to_pylist()
        failed = run.read_table(run.errors(shard)) if marker["errors"] else None
        errors = failed["key"].to_pylist() if failed is not None else []
        retry = sum(retryable_rows(failed)) if failed is not None else 0
        if retry:
            problems.append(f"shard {shard}: {retry} row(s) failed for reasons that may pass "
                            f"({reasons(failed, 1)}); run the embed stage again to retry them")
        if (len(keys), len(errors)) != (marker["embedded"], marker["errors"]):
            problems.append(f"shard {shard}: {len(keys)} embedded + {len(errors)} errors on disk, marker says "
                            f"{marker['embedded']} + {marker['errors']}")
        if len(set(keys)) != len(keys):
            problems.append(f"shard {shard}: an embedded key appears more than once")
        if deep:
            inputs = shard_keys(shard, spec, cfg.input, run.storage)
            if sorted(inputs) != sorted(keys + errors):
                missing = set(inputs) - set(keys + errors)
                extra = set(keys + errors) - set(inputs)
                problems.append(f"shard {shard}: input keys differ from embeddings ∪ errors "
                                f"(missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]})")
        seen.append(_hashes(keys))
        if shard in assigned:
            got = run.read_table(run.assigned(shard, assigned[shard]), ["key"])["key"].to_pylist()
            if len(got) != len(set(got)) or set(got) != set(keys):
                problems.append(f"shard {shard}: assignments keys are not exactly the embedded keys "
                                f"({len(got)} rows, {len(set(got) ^ set(keys))} differ)")
        else:
            problems.append(f"shard {shard}: no assignments (assignments/{shard}.done.json missing)")
    if seen:
        hashes = np.sort(np.concatenate(seen))
        dups = int((hashes[1:] == hashes[:-1]).sum())
        if dups:
            problems.append(f"{dups} embedded key(s) appear in more than one shard")
    version = version or (Versions(run).latest() or {}).get("version")
    return problems + (verify_version(run, version) if version else [])
