"""Command line: `scaleclust run CONFIG` (all stages), one sub-command per stage, verify, eval, export; the
index commands (scaleclust.index.cli) and submit/status/logs for Ray clusters (scaleclust.submit)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scaleclust.config import Config, ConfigError, load
from scaleclust.lease import LeaseHeld


def _load(args: argparse.Namespace) -> Config:
    return load(args.config, args.set or [])


def print_clusters(run_url: str, storage: Any, limit: int = 30) -> None:
    """A table of the largest clusters: size, confidence, name (when named) and exemplar keys."""
    from scaleclust.rundir import RunDir

    run = RunDir(run_url, storage)
    table = run.read_table(run.clusters, ["cluster", "size", "mean_confidence", "name", "exemplar_keys"])
    rows = sorted(table.to_pylist(), key=lambda r: -r["size"])
    print(f"{'cluster':>7} {'size':>8} {'conf':>5}  {'name':<20} exemplars")
    for row in rows[:limit]:
        print(f"{row['cluster']:>7} {row['size']:>8} {row['mean_confidence']:>5.2f}  {row['name'] or '-':<20} "
              f"{', '.join(row['exemplar_keys'][:4])}")
    if len(rows) > limit:
        print(f"... {len(rows) - limit} more in {run.clusters}")


def print_metrics(metrics: dict[str, Any]) -> None:
    counts = metrics.get("counts", {})
    print(f"rows {counts.get('rows')}: embedded {counts.get('embedded')}, skipped {counts.get('errors')} "
          f"(see errors/), assigned {counts.get('assigned')} to {counts.get('non_empty_clusters')} clusters")
    labels = metrics.get("labels")
    if labels:
        print(f"against '{labels['column']}' ({labels['n']} labelled rows): ACC {labels['acc']:.3f}  "
              f"NMI {labels['nmi']:.3f}  ARI {labels['ari']:.3f}  many-to-one ACC {labels['acc_many_to_one']:.3f}")
    print("seconds: " + ", ".join(f"{k} {v}" for k, v in metrics.get("seconds", {}).items()))


def cmd_run(args: argparse.Namespace) -> int:
    from scaleclust.pipeline import run_all

    cfg = _load(args)
    metrics = run_all(cfg)
    print_clusters(cfg.run_dir, cfg.storage)
    print_metrics(metrics)
    print(f"scaleclust: done; run directory {cfg.run_dir}")
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from scaleclust.pipeline import prepare, run_stage
    from scaleclust.ray_setup import ensure_ray

    cfg = _load(args)
    run, shards = prepare(cfg)
    ensure_ray(cfg)
    result = run_stage(args.stage, cfg, run, shards)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from scaleclust.update import update

    cfg = _load(args)
    manifest = update(cfg)
    print_clusters(cfg.run_dir, cfg.storage)
    print(f"scaleclust: version {manifest['version']} is the latest ({manifest['rows']} rows, model "
          f"{manifest['model']}); run directory {cfg.run_dir}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from scaleclust.config import StorageConfig
    from scaleclust.rundir import RunDir
    from scaleclust.versions import Versions

    history = Versions(RunDir(args.run_dir.rstrip("/"), StorageConfig()))
    latest = (history.latest() or {}).get("version")
    print(f"{'version':<24} {'rows':>9} {'new rows':>9} {'k':>4} {'refit':<5} {'drift':>6} {'status':<6} model")
    for m in history.complete():
        drift = m.get("drift") or {}
        print(f"{m['version'] + (' *' if m['version'] == latest else ''):<24} {m['rows']:>9} {m['new_rows']:>9} "
              f"{m['k']:>4} {'yes' if m['refit'] else 'no':<5} {drift.get('score', 0):>6.3f} "
              f"{drift.get('status', '-'):<6} {m['model']}")
    print(f"* latest (versions/LATEST.json); each version's files: {history.path('VERSION')}/manifest.json")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from scaleclust.verify import verify

    problems = verify(args.run_dir, deep=args.deep, version=args.version)
    for problem in problems:
        print(f"verify: {problem}")
    print(f"verify: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}")
    return 1 if problems else 0


def cmd_eval(args: argparse.Namespace) -> int:
    import ray

    from scaleclust.cluster.metrics import scores
    from scaleclust.config import StorageConfig
    from scaleclust.rundir import RunDir
    from scaleclust.summary import reduce_run

    run = RunDir(args.run_dir.rstrip("/"), StorageConfig())
    model = run.marker(run.model("model.json"))
    if model is None:
        raise ConfigError(f"{args.run_dir}: no committed model to evaluate")
    ray.init(address="local", include_dashboard=False, num_cpus=4) if not ray.is_initialized() else None
    result = scores(reduce_run(run, 1, args.labels).contingency.matrix())
    print(json.dumps({"column": args.labels, **result}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scaleclust.export import export_laion
    from scaleclust.pipeline import recorded

    cfg, run, _ = recorded(args.run_dir.rstrip("/"))
    written = export_laion(run, args.out.rstrip("/"), cfg.storage)
    print(f"export: {len(written)} files in LAION layout (img_emb/, metadata/ with cluster and confidence) "
          f"under {args.out}")
    return 0


def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CONFIG argument and its --set overrides."""
    p.add_argument("config", help="YAML config (see jobs/demo.yaml)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. cluster.k=20")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaleclust", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    with_config(sub.add_parser("run", help="all stages: embed, fit, assign, summary")).set_defaults(func=cmd_run)
    for stage in ("embed", "fit", "assign", "summary"):
        p = with_config(sub.add_parser(stage, help=f"only the {stage} stage"))
        p.set_defaults(func=cmd_stage, stage=stage)
    p = sub.add_parser("verify", help="check the run directory's invariants")
    p.add_argument("run_dir")
    p.add_argument("--deep", action="store_true", help="re-read input shards and compare keys one by one")
    p.add_argument("--version", help="also check this version (default: the latest, when versions exist)")
    p.set_defaults(func=cmd_verify)
    with_config(sub.add_parser("update", help="nightly: new shards only, drift, refit by policy, a new version")
                ).set_defaults(func=cmd_update)
    p = sub.add_parser("versions", help="list the versions of a run directory")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("eval", help="ACC/NMI/ARI of the assignments against a label column")
    p.add_argument("run_dir")
    p.add_argument("--labels", default="label", help="column of embeddings/*.parquet holding the labels")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("export", help="write the embeddings (+ clusters) in LAION's img_emb/ + metadata/ layout")
    p.add_argument("run_dir")
    p.add_argument("out", help="output folder or URL (same storage settings as the run)")
    p.set_defaults(func=cmd_export)
    from scaleclust.index.cli import add_commands as add_index_commands
    from scaleclust.submit import add_commands as add_submit_commands
    add_index_commands(sub)
    add_submit_commands(sub, with_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"scaleclust: config error: {err}", file=sys.stderr)
        return 2
    except LeaseHeld as err:
        print(f"scaleclust: {err}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
