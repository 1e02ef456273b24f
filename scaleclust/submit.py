"""`scaleclust submit | status | logs`: run a job on a remote Ray cluster through its Job API.

The laptop validates the config (a bad one fails here, before anything is sent), packs what the job needs
(the package, jobs/, the config and any --include; never a known secret file unless --allow-secret) into
the job's runtime env (so the cluster runs this checkout's code), prints that manifest, submits
`python -m scaleclust.cli run CONFIG --set ...`, streams the logs and exits with the job's final
status. Inside the job the CLI joins the cluster through RAY_ADDRESS, which Ray sets for entrypoints.
"""
from __future__ import annotations

import argparse
import asyncio
import fnmatch
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from scaleclust.config import ConfigError, from_dict, read
from scaleclust.failures import Unreachable

SHIPPED = ("scaleclust", "jobs")  # what every job needs: the package and the job configs
DEBRIS = ("__pycache__", "*.pyc", "*.egg-info", ".pytest_cache")  # skipped inside what is shipped
# Known secret files: refused even when named, unless --allow-secret. Matched against every path part.
SECRETS = (".env", ".env.*", ".envrc", ".aws", ".netrc", ".ssh", ".pypirc", ".docker", ".git", "*.pem", "*.key",
           "*.p12", "id_*", "*credentials*", "*service-account*.json", "*service_account*.json")
EXIT = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 1}


def dashboard_address(address: str | None) -> str:
    """The Job API address from --address, RAY_API_SERVER_ADDRESS or an http RAY_ADDRESS."""
    for value in (address, os.environ.get("RAY_API_SERVER_ADDRESS"), os.environ.get("RAY_ADDRESS")):
        if value and value.startswith(("http://", "https://")):
            return value
    raise ConfigError("no Ray Job API address: pass --address http://HEAD:8265 (the head's dashboard port) "
                      "or set RAY_API_SERVER_ADDRESS")


def _client(address: str | None) -> Any:
    from ray.job_submission import JobSubmissionClient

    url = dashboard_address(address)
    try:
        return JobSubmissionClient(url)
    except ConnectionError as err:
        raise Unreachable(f"cannot reach the Ray Job API at {url}: {err}") from None


def entrypoint(config: Path, working_dir: Path, overrides: list[str]) -> str:
    """The job's command, with the config named relative to the shipped working directory."""
    config, working_dir = config.resolve(), working_dir.resolve()
    if not config.is_relative_to(working_dir):
        raise ConfigError(f"{config} is outside the working directory {working_dir}, so the cluster would not "
                          "receive it; move it there or pass --working-dir")
    args = ["python", "-m", "scaleclust.cli", "run", str(config.relative_to(working_dir))]
    for assignment in overrides:
        args += ["--set", assignment]
    return shlex.join(args)


def check_portable(data: dict[str, Any]) -> None:
    """Refuse relative local paths (as written, before they were made absolute here): on the cluster
    they would resolve inside the job's temporary working directory, and the run would vanish with it."""
    shards = data["input"]["shards"]
    named = [("run_dir", data["run_dir"])] + [("input.shards", s) for s in ([shards] if isinstance(shards, str) else shards)]
    for field, value in named:
        if "://" not in value and not os.path.isabs(os.path.expanduser(value)):
            raise ConfigError(f"{field}: {value!r} is a relative local path; a submitted job needs a URL "
                              f"(s3://...) or an absolute path the cluster shares, e.g. --set {field}=s3://BUCKET/...")


def is_secret(root: Path, relative: Path) -> bool:
    """A known secret file by name (any part of its path below `root`), or a JSON file holding a private
    key (a cloud service-account key)."""
    if any(fnmatch.fnmatch(part, pattern) for part in relative.parts for pattern in SECRETS):
        return True
    return relative.suffix == ".json" and _holds_private_key(root / relative)


def _holds_private_key(path: Path) -> bool:
    try:
        return path.stat().st_size < 1_000_000 and '"private_key"' in path.read_text(errors="replace")
    except OSError:
        return False


@dataclass(frozen=True)
class Shipped:
    """One file of the job's working directory: its path, its size, and where it links to when it is a
    symbolic link (shipped as a link, relative, never as its target's bytes)."""

    path: str
    size: int
    link: str = ""


def _files(root: Path, entry: Path) -> list[Path]:
    """The files and symbolic links under `entry` (or `entry` itself), relative to `root`, without build
    debris. Links to folders are listed, not entered."""
    if entry.is_symlink() or entry.is_file():
        found = [entry]
    else:
        found = []
        for folder, dirs, files in os.walk(entry):  # os.walk does not follow links to folders
            found += [Path(folder, name) for name in files + [d for d in dirs if Path(folder, d).is_symlink()]]
    relative = sorted(p.relative_to(root) for p in found)
    return [r for r in relative if not any(fnmatch.fnmatch(part, d) for part in r.parts for d in DEBRIS)]


def _real_path(root: Path, relative: Path) -> Path:
    """Where `relative` really is (links followed), relative to `root`; a ConfigError when that is outside
    `root` (a link, or a file below a linked folder), so a link never ships a file from elsewhere."""
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise ConfigError(f"refusing to ship {relative}: it is {target}, outside the working directory {root} "
                          "(through a link); copy the file into the working directory or remove the link")
    return target.relative_to(root)


def pack(working_dir: Path, config: Path, includes: list[str], allow_secret: bool, into: Path) -> list[Shipped]:
    """Copy what the job needs into `into`: the package, the job configs, the config and each --include
    (paths inside the working directory). Refuses known secret files, even when named or linked to,
    unless `allow_secret`, and any link out of the working directory; a link inside it is shipped as a
    link, with its target. Returns the manifest: every file shipped."""
    root = working_dir.resolve()
    entries = [root / name for name in SHIPPED if (root / name).exists()] + [config.resolve()]
    for name in includes:
        path = Path(os.path.normpath(root / name))  # a link is judged by where it points, below
        if not path.is_relative_to(root) or not path.exists():
            raise ConfigError(f"--include {name}: not a file or folder inside the working directory {root}")
        entries.append(path)
    manifest: list[Shipped] = []
    secrets: list[str] = []
    copied: set[Path] = set()
    pending = [relative for entry in dict.fromkeys(entries) for relative in _files(root, entry.absolute())]
    while pending:
        relative = pending.pop(0)
        if relative in copied:
            continue
        copied.add(relative)
        source, dest = root / relative, into / relative
        target = _real_path(root, relative)
        if (is_secret(root, relative) or is_secret(root, target)) and not allow_secret:
            secrets.append(str(relative) + (f" (a link to {target})" if source.is_symlink() else ""))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            pending += _files(root, root / target)  # a link is shipped with what it points to
            dest.symlink_to(os.path.relpath(target, relative.parent))
            manifest.append(Shipped(str(relative), 0, str(target)))
            continue
        shutil.copy2(source, dest)
        manifest.append(Shipped(str(relative), source.stat().st_size))
    if secrets:
        raise ConfigError(f"refusing to ship secret file(s): {', '.join(secrets[:5])}"
                          f"{f' and {len(secrets) - 5} more' if len(secrets) > 5 else ''}; remove them from what "
                          "is shipped, or pass --allow-secret if the job truly needs them")
    return manifest


def print_manifest(manifest: list[Shipped]) -> None:
    """Every file shipped, with its size (a link: where it points)."""
    print(f"submit: shipping {len(manifest)} files, {sum(f.size for f in manifest) / 1024:.1f} KiB:")
    for file in manifest:
        print(f"  {file.path}  " + (f"-> {file.link} (link)" if file.link else f"{file.size / 1024:.1f} KiB"))


async def _stream(client: Any, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def follow(client: Any, job_id: str) -> str:
    """Print the job's logs until it ends; its final status."""
    try:
        asyncio.run(_stream(client, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on: scaleclust status {job_id}", file=sys.stderr)
        raise SystemExit(130) from None
    while (status := str(client.get_job_status(job_id).value)) not in EXIT:  # logs end a moment before status
        time.sleep(0.5)
    return status


def report(client: Any, job_id: str) -> int:
    """Print the job's status line; its exit code (0 succeeded or still going, 1 failed or stopped)."""
    info = client.get_job_info(job_id)
    status = str(info.status.value)
    print(f"job {job_id}: {status}" + (f": {info.message}" if info.message else ""),
          file=sys.stderr if status in ("FAILED", "STOPPED") else sys.stdout)
    return EXIT.get(status, 0)


def cmd_submit(args: argparse.Namespace) -> int:
    config, overrides = Path(args.config), args.set or []
    data = read(config, overrides)
    from scaleclust.stages import fit  # torch: imported only when a job is submitted, not for --help

    fit.check(from_dict(data, str(config)))  # a bad config fails here, before the cluster is contacted
    check_portable(data)
    command = entrypoint(config, Path(args.working_dir), overrides)
    with tempfile.TemporaryDirectory(prefix="scaleclust-submit-") as staging:
        manifest = pack(Path(args.working_dir), config, args.include or [], args.allow_secret, Path(staging))
        print_manifest(manifest)
        client = _client(args.address)
        runtime_env: dict[str, Any] = {"working_dir": staging}
        if args.pip:
            runtime_env["pip"] = args.pip
        job_id = client.submit_job(entrypoint=command, runtime_env=runtime_env,
                                   submission_id=args.job_id or f"scaleclust-{config.stem}-{time.strftime('%Y%m%d-%H%M%S')}",
                                   metadata={"config": str(config), "tool": "scaleclust"})
    print(f"submitted {job_id}: {command}", flush=True)
    if args.no_wait:
        print(f"follow it: scaleclust logs {job_id} --follow; scaleclust status {job_id}")
        return 0
    follow(client, job_id)
    return report(client, job_id)


def cmd_status(args: argparse.Namespace) -> int:
    return report(_client(args.address), args.job_id)


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if not args.follow:
        print(client.get_job_logs(args.job_id), end="")
        return 0
    follow(client, args.job_id)
    return report(client, args.job_id)


def add_commands(sub: Any, config_arguments: Callable[[argparse.ArgumentParser], argparse.ArgumentParser]) -> None:
    """submit / status / logs sub-commands."""
    def with_address(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--address", help="Job API of the cluster, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)")
        return p

    p = with_address(config_arguments(sub.add_parser("submit", help="run all stages as a job on a Ray cluster")))
    p.add_argument("--working-dir", default=".", help="directory holding the package and jobs/ (default: the current one)")
    p.add_argument("--include", action="append", metavar="PATH", help="also ship this file or folder of the working "
                   "directory (default: only scaleclust/, jobs/ and the config)")
    p.add_argument("--allow-secret", action="store_true", help="ship known secret files (.env, keys, credentials) "
                   "that --include names; refused otherwise")
    p.add_argument("--pip", action="append", metavar="REQUIREMENT", help="extra pip requirement of the job's env")
    p.add_argument("--job-id", help="submission id (default: scaleclust-CONFIG-TIMESTAMP)")
    p.add_argument("--no-wait", action="store_true", help="return after submitting instead of streaming logs")
    p.set_defaults(func=cmd_submit)
    p = with_address(sub.add_parser("status", help="a submitted job's status (exit 1 when it failed)"))
    p.add_argument("job_id")
    p.set_defaults(func=cmd_status)
    p = with_address(sub.add_parser("logs", help="a submitted job's logs"))
    p.add_argument("job_id")
    p.add_argument("--follow", action="store_true", help="stream until the job ends; exit with its status")
    p.set_defaults(func=cmd_logs)
