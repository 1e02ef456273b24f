"""Command line: `scaleclust run CONFIG` (every stage the run needs), one command per stage of the
registry (scaleclust.pipeline.STAGES), verify, eval, export, report and info over a run directory; dedup
and search (scaleclust.index_commands) and submit/status/logs for Ray clusters (scaleclust.submit)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from scaleclust import api
from scaleclust.api import reachable
from scaleclust.config import Config, ConfigError, load
from scaleclust.console import configure, filter_stderr, internal_failure, user_mistake
from scaleclust.failures import MissingCredentials, ReadFailed, UserError, Vanished, storage_mistake
from scaleclust.lease import LeaseError


def _load(args: argparse.Namespace) -> Config:
    return load(args.config, args.set or [])


def print_clusters(run_url: str, storage: Any, limit: int = 30) -> None:
    """A table of the largest clusters: size, confidence, name and its score (once named), the runner-up
    names, and exemplar keys."""
    from scaleclust.rundir import RunDir

    run = RunDir(run_url, storage)
    table = run.read_table(run.clusters, ["cluster", "size", "mean_confidence", "name", "name_score", "top_names",
                                          "exemplar_keys"])
    rows = sorted(table.to_pylist(), key=lambda r: -r["size"])
    print(f"{'cluster':>7} {'size':>8} {'conf':>5}  {'name':<28} {'score':>5}  {'runners-up':<36} exemplars")
    for row in rows[:limit]:
        score = "" if row["name_score"] is None else f"{row['name_score']:.2f}"
        named = (row["name"] or "?").split(" (")[0]  # NAME, or NAME (NOUN) between clusters sharing it
        runners = ", ".join([n for n in row["top_names"] if n != named][:4 if named == "?" else 3])[:36]
        print(f"{row['cluster']:>7} {row['size']:>8} {row['mean_confidence']:>5.2f}  {(row['name'] or '-')[:28]:<28} "
              f"{score:>5}  {runners:<36} {', '.join(row['exemplar_keys'][:3])}")
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

    from scaleclust.stages.report import index_url
    from scaleclust.rundir import RunDir

    cfg = _load(args)
    metrics = run_all(cfg)
    print_clusters(cfg.run_dir, cfg.storage, limit=10)
    print_metrics(metrics)
    print(f"scaleclust: done in {sum(metrics.get('seconds', {}).values()):.0f} s; run directory {cfg.run_dir}")
    print(f"report: {index_url(RunDir(cfg.run_dir, cfg.storage))}")
    return retry_exit(metrics.get("counts", {}).get("retryable", 0))


def cmd_stage(args: argparse.Namespace) -> int:
    from scaleclust.stages import fit
    from scaleclust.pipeline import prepare, run_stage
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import leased

    cfg = _load(args)
    fit.check(cfg)  # a bad method setting fails before the lease creates the run directory
    with leased(cfg, args.stage) as lease:  # one writer
        ctx = prepare(cfg, lease)
        ensure_ray(cfg)
        result = run_stage(args.stage, ctx)
    print(json.dumps(result, indent=2, default=str))
    return retry_exit(result.get("retryable", 0))


def retry_exit(retryable: int) -> int:
    """Exit 1 while rows failed for reasons that may pass, so a scheduler notices and runs again."""
    if not retryable:
        return 0
    print(f"scaleclust: {retryable} row(s) failed for reasons that may pass (missing object, read failure; "
          "see errors/); run the same command again to retry them", file=sys.stderr)
    return ReadFailed.exit_code


def run_storage(args: argparse.Namespace) -> Any:
    """Storage settings for a command that takes a RUN: --endpoint-url (and friends) when given, else
    None, so the run's recorded settings (or the AWS environment) apply."""
    from scaleclust.config import StorageConfig

    given = {"endpoint_url": args.endpoint_url, "region": args.region, "profile": args.profile}
    given = {key: value for key, value in given.items() if value is not None}
    return StorageConfig(**given, anon=args.anon) if given or args.anon else None


def open_run(args: argparse.Namespace) -> Any:
    """The recorded Context (config, RunDir, shards) of the RUN argument; a run directory that cannot be
    reached is a one-line error naming it and the option that names its endpoint."""
    return api.open(args.run_dir, run_storage(args)).ctx


def cmd_update(args: argparse.Namespace) -> int:
    from scaleclust.update import update

    cfg = _load(args)
    manifest = update(cfg)
    print_clusters(cfg.run_dir, cfg.storage)
    print(f"scaleclust: version {manifest['version']} is the latest ({manifest['rows']} rows, model "
          f"{manifest['model']}); run directory {cfg.run_dir}")
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    run = api.open(args.run_dir, run_storage(args))
    print(f"{'version':<24} {'rows':>9} {'new rows':>9} {'k':>4} {'refit':<5} {'drift':>6} {'status':<6} model")
    for m in run.versions():
        drift = m.get("drift") or {}
        print(f"{m['version'] + (' *' if m['latest'] else ''):<24} {m['rows']:>9} {m['new_rows']:>9} "
              f"{m['k']:>4} {'yes' if m['refit'] else 'no':<5} {drift.get('score', 0):>6.3f} "
              f"{drift.get('status', '-'):<6} {m['model']}")
    print(f"* latest (versions/LATEST.json); each version's files: {run.dir.path('versions', 'VERSION')}/manifest.json")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from scaleclust.verify import verify

    reachable(args.run_dir.rstrip("/"), run_storage(args))
    problems = verify(args.run_dir.rstrip("/"), run_storage(args), deep=args.deep, version=args.version)
    for problem in problems:
        print(f"verify: {problem}")
    print(f"verify: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'ok'}")
    return 1 if problems else 0


def cmd_eval(args: argparse.Namespace) -> int:
    print(json.dumps(api.open(args.run_dir, run_storage(args)).eval(args.labels), indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from scaleclust.export import export_laion

    run = open_run(args).run
    written = export_laion(run, args.out.rstrip("/"), run.storage)
    print(f"export: {len(written)} files in LAION layout (img_emb/, metadata/ with cluster and confidence) "
          f"under {args.out}")
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from scaleclust.config import apply_override, from_dict
    from scaleclust.pipeline import run_stage
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import Context, leased

    ctx = open_run(args)
    cfg, run = ctx.cfg, ctx.run
    if not run.exists(run.clusters):
        raise ConfigError(f"{args.run_dir}: no clusters.parquet yet; run `scaleclust run CONFIG` first")
    data = cfg.model_dump(mode="json")
    for assignment in args.set or []:
        if not assignment.startswith("label."):
            raise ConfigError(f"--set {assignment}: only label.* fields can change after a run; the others are "
                              f"recorded in {run.config}")
        apply_override(data, assignment)
    cfg = from_dict(data, f"{run.config} with --set")
    with leased(cfg, "label", run) as lease:
        ensure_ray(cfg)
        result = run_stage("label", Context(cfg, run, ctx.shards, lease))
    print_clusters(run.url, cfg.storage)
    print(json.dumps(result, indent=2, default=str))
    return 0


def with_storage(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The RUN argument and the storage options to reach it (default: the run's recorded settings)."""
    p.add_argument("run_dir", help="run directory or URL (s3://BUCKET/runs/NAME)")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint of the run (default: AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--region", help="S3 region")
    p.add_argument("--profile", help="AWS profile holding the credentials")
    p.add_argument("--anon", action="store_true", help="read without credentials (public buckets)")
    return p


def cmd_report(args: argparse.Namespace) -> int:
    from scaleclust.pipeline import run_stage
    from scaleclust.ray_setup import ensure_ray
    from scaleclust.stage import Context, leased

    ctx = open_run(args)
    with leased(ctx.cfg, "report", ctx.run) as lease:
        ensure_ray(ctx.cfg)
        result = run_stage("report", Context(ctx.cfg, ctx.run, ctx.shards, lease))
    print(f"report: {result['clusters']} clusters, {result['thumbnails']} thumbnails -> {result['report']}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = api.open(args.run_dir, run_storage(args)).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"run {info['run_dir']}")
    for stage, state in info["stages"].items():
        shards = f"  {state['shards']} shards" if "shards" in state else ""
        print(f"  {stage:<10} {'committed' if state['done'] else '-':<10}{shards}")
    print(f"rows {info['rows']:,}: embedded {info['embedded']:,}, skipped {sum(info['skipped'].values()):,}")
    for kind, n in info["skipped"].items():
        print(f"  {kind:<24} {n:,}")
    fallbacks = info["fallbacks"]
    print(f"fallbacks: {fallbacks['decode_on_cpu']:,} rows decoded on the CPU (the device was out of memory), "
          f"{fallbacks['thumbnails_failed']:,} report thumbnails failed")
    print(f"encoder {info['encoder'] or '-'}")
    model = info["model"]
    print("model   " + (f"{model['method']} k={model['k']} dim={model['dim']} on {model['sample_rows']} rows "
                        f"({model['model_id']})" if model else "-"))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from scaleclust.plan import GIB, format_plan, make_plan
    from scaleclust.price import GpuCluster, format_price, price

    cfg = _load(args)
    plan = make_plan(cfg, int(args.memory_gb * GIB) if args.memory_gb else None, int(args.rows) if args.rows else None)
    if args.gpu:
        plan["priced"] = price(cfg, plan, GpuCluster(args.gpu, args.gpus_per_node, args.nodes, args.cpus_per_gpu))
    print(json.dumps(plan, indent=2) if args.json else "\n".join(
        [format_plan(cfg, plan), *([format_price(plan["priced"])] if args.gpu else [])]))
    return 0


def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The CONFIG argument and its --set overrides."""
    p.add_argument("config", help="YAML config (see jobs/demo.yaml)")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", help="override a field, e.g. cluster.k=20")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scaleclust", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    with_config(sub.add_parser("run", help="every stage a run needs, in order (docs/architecture.md)")
                ).set_defaults(func=cmd_run)
    p = with_storage(sub.add_parser("label", help="(re)name the clusters of a run, with its recorded config"))
    p.add_argument("--set", action="append", metavar="label.FIELD=VALUE", help="override a label field, "
                   "e.g. label.min_score=0.2")
    p.set_defaults(func=cmd_label)
    p = with_storage(sub.add_parser("verify", help="check the run directory's invariants"))
    p.add_argument("--deep", action="store_true", help="re-read input shards and compare keys one by one")
    p.add_argument("--version", help="also check this version (default: the latest, when versions exist)")
    p.set_defaults(func=cmd_verify)
    p = with_config(sub.add_parser("plan", help="what a run will do and need (shards, rows, memory, disk, "
                                   "GPU-hours), without starting Ray"))
    p.add_argument("--memory-gb", type=float, help="memory of one worker to check stages against "
                   "(default: this machine's)")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.add_argument("--rows", type=float, help="size the job at this many images without reading its input "
                   "(e.g. 2.3e9 for LAION-2B-en), in shards of 10,000")
    p.add_argument("--gpu", metavar="CARD", help="price the job on a cluster of this card (e.g. H100): each "
                   "stage's wall time and GPU-hours from the measured or assumed rates of scaleclust/price.py")
    p.add_argument("--gpus-per-node", type=int, default=8, help="with --gpu (default 8)")
    p.add_argument("--nodes", type=int, default=1, help="with --gpu (default 1)")
    p.add_argument("--cpus-per-gpu", type=int, default=24, help="with --gpu: CPU cores per GPU (default 24)")
    p.set_defaults(func=cmd_plan)
    with_config(sub.add_parser("update", help="nightly: new shards only, drift, refit by policy, a new version")
                ).set_defaults(func=cmd_update)
    p = with_storage(sub.add_parser("versions", help="list the versions of a run directory"))
    p.set_defaults(func=cmd_versions)
    p = with_storage(sub.add_parser("eval", help="ACC/NMI/ARI of the assignments against a label column"))
    p.add_argument("--labels", default="label", help="column of embeddings/*.parquet holding the labels")
    p.set_defaults(func=cmd_eval)
    p = with_storage(sub.add_parser("export", help="write the embeddings (+ clusters) in LAION's img_emb/ + metadata/ layout"))
    p.add_argument("out", help="output folder or URL (same storage settings as the run)")
    p.set_defaults(func=cmd_export)
    p = with_storage(sub.add_parser("report", help="write RUN/report/index.html from the run's recorded config"))
    p.set_defaults(func=cmd_report)
    p = with_storage(sub.add_parser("info", help="committed stages, shard counts, skipped rows by error type, the model"))
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_info)
    from scaleclust.index_commands import add_commands as add_index_commands
    from scaleclust.pipeline import STAGES
    from scaleclust.submit import add_commands as add_submit_commands
    add_index_commands(sub)
    add_submit_commands(sub, with_config)
    for stage in STAGES:  # the other stages' commands: CONFIG in, that stage alone
        if stage.name not in sub.choices:
            p = with_config(sub.add_parser(stage.name, help=f"only the {stage.name} stage (commits "
                                           f"{', '.join(stage.commits)})"))
            p.set_defaults(func=cmd_stage, stage=stage.name)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's logs and progress bars, worker output and tracebacks")
    for command in sub.choices.values():  # also accepted after the command
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def as_user_error(err: BaseException) -> UserError | None:
    """The user's mistake behind `err` (itself or an exception it was raised from), phrased as a
    UserError; None when it is none of ours to explain, which makes it a bug."""
    ray_errors = sys.modules.get("ray.exceptions")  # never imported: no Ray error to explain (and no import cost)
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if ray_errors and isinstance(err, ray_errors.RayTaskError) and err.cause is not None:  # a task's own
            err = err.cause
            continue
        if isinstance(err, UserError):
            return err
        if ray_errors and isinstance(err, ray_errors.AuthenticationError):
            return MissingCredentials(
                f"the Ray cluster requires a token ({err.message.splitlines()[0]}): set RAY_AUTH_TOKEN, or put the "
                "token in ~/.ray/auth_token (or the file RAY_AUTH_TOKEN_PATH names); see docs/operations.md, token "
                "authentication")
        mistake = storage_mistake(err)
        if mistake is not None:
            return mistake
        if isinstance(err, FileNotFoundError):  # e.g. a committed object deleted while a stage read it
            return Vanished(f"a file it reads is gone ({err}); run the command again (scaleclust verify RUN says "
                            "what a run directory lacks)")
        err = err.__cause__ or err.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run a command; its exit code: 0 done, 1 rows that may pass or a user's mistake found while
    working, 2 a bad config or setup found before any work, 3 the run directory's lease, 4 a bug
    (docs/commands.md)."""
    args = build_parser().parse_args(argv)
    configure(args.verbose)
    try:
        return args.func(args)
    except LeaseError as err:  # another writer holds the run directory, or this command lost it: exit 3
        return user_mistake(err, str(err), 3)
    except Exception as err:
        mistake = as_user_error(err)
        if mistake is None:
            return internal_failure(err)
        if isinstance(mistake, ConfigError):
            return user_mistake(err, f"config error: {mistake}", mistake.exit_code)
        return user_mistake(err, f"{mistake}{'' if args.verbose else '  (--verbose shows the traceback)'}",
                            mistake.exit_code)


def entry() -> None:
    """The `scaleclust` command: main() with known-harmless lines of Ray's C++ logs filtered from stderr
    unless --verbose (in-process callers of main() keep their own stderr)."""
    if not {"-v", "--verbose"} & set(sys.argv[1:]):
        filter_stderr()
    sys.exit(main())


if __name__ == "__main__":
    entry()
