"""One writer per run directory: a lease object RUN/lease.json with an owner, an expiry and a heartbeat.

Taking the lease is an atomic create-if-absent:
- local disk: `os.open(O_CREAT | O_EXCL)`;
- S3: a conditional PUT (`If-None-Match: *`); a heartbeat or a takeover is a compare-and-swap PUT
  (`If-Match: ETAG` of the lease it read), so of two runs that find the same expired lease only one
  replaces it;
- other stores (gs://, ...): write, wait, read back and compare owners. Two writers within that window
  can both believe they won: on such stores run one scheduler per run directory.
A lease expires `ttl` seconds after its last heartbeat; a thread renews it every ttl/3. A renewal that
fails for a reason that may pass (the store unreachable, a dropped connection, a timeout) is retried
every ttl/15 until the lease would expire; then, or when another owner's lease is found, the lease is
lost (`Lease.lost` says why) and every commit after that raises LeaseLost.

Who may take a lease over: a lease of a process of this host is judged by that process, since it can be
checked: gone, the lease is taken over at once (re-running a killed job does not wait out the ttl);
alive, it is never taken over, even expired (a holder whose heartbeat stalled may still be writing). In
this very process, the holder is alive while its Lease is held (a command that ended without deleting
its lease, the store being down, leaves it to the next). A lease of another host is judged by its
expiry alone. Deleting a released lease checks the owner first
(not atomic on local disk or S3; it only runs when the holder finishes).

Commits check the lease themselves (`Holder.check`, through the run directory of the stage's Context),
in the driver and in Ray workers alike: see docs/operations.md, "The lease".
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
from botocore.exceptions import BotoCoreError, ClientError

from scaleclust.config import StorageConfig
from scaleclust.storage import filesystem, join, read_bytes

TTL_SECONDS = 120.0
# Failures of a storage request that may pass: the store unreachable, a dropped connection, a timeout.
TRANSIENT = (OSError, BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError)


class LeaseError(RuntimeError):
    """The run directory's lease stops this command (exit 3)."""


class LeaseHeld(LeaseError):
    """Another run holds the run directory's lease."""


class LeaseLost(LeaseError):
    """This command's lease expired or passed to another run: it must commit nothing further."""


# Owners of the leases this process holds (acquired, not yet released).
_HELD: set[str] = set()


def holder_alive(owner: str) -> bool | None:
    """Whether the holder an owner `HOST:PID:TOKEN` names is alive: True or False for a process of this
    host (in this process: whether that Lease is still held), None for another host's, which cannot be
    checked (only its lease's expiry tells)."""
    host, _, rest = owner.rpartition(":")[0].rpartition(":")
    if host != socket.gethostname() or not rest.isdigit():
        return None
    if int(rest) == os.getpid():
        return owner in _HELD
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _lost_why(held: dict[str, Any] | None, owner: str, now: float) -> str | None:
    """Why a lease read from storage is no longer `owner`'s, or None while it is."""
    if not held:
        return "lease.json is gone"
    if held.get("owner") != owner:
        return f"lease.json now names {held.get('owner')} ({held.get('command')})"
    if held.get("expires", 0) <= now:
        return f"it expired {now - held['expires']:.0f} s ago without a heartbeat"
    return None


def _refused(err: BaseException) -> bool:
    """Whether a conditional PUT failed on its condition (the lease changed), not on the way there."""
    cause = err.__cause__ if isinstance(err.__cause__, ClientError) else err
    code = getattr(cause, "response", {}).get("Error", {}).get("Code", "") if isinstance(cause, ClientError) else ""
    text = str(err).lower()
    return code in ("PreconditionFailed", "412") or "precondition" in text or "pre-condition" in text


@dataclass(frozen=True)
class Holder:
    """What a commit needs to check that its command still holds the lease: small and picklable, so it
    travels with the run directory to Ray workers (scaleclust.rundir.RunDir.holder)."""

    url: str  # RUN/lease.json
    storage: StorageConfig
    owner: str

    def check(self) -> None:
        """Raise LeaseLost unless lease.json still names this owner and has not expired. One small read:
        a worker cannot see the driver's heartbeat thread, and the file is what a second writer sees."""
        try:
            held = json.loads(read_bytes(self.url, self.storage))
        except FileNotFoundError:
            held = None
        except json.JSONDecodeError:
            held = {"owner": "?"}
        why = _lost_why(held, self.owner, time.time())
        if why:
            raise LeaseLost(f"{self.url.rsplit('/', 1)[0]}: lost the lease ({why}); stopped before the next "
                            f"commit, run the command again to resume")


class Lease:
    """The lease of one run directory; `with Lease(url, storage, what="update"):` holds it."""

    def __init__(self, run_url: str, storage: StorageConfig, what: str, ttl: float = TTL_SECONDS) -> None:
        self.url = join(run_url, "lease.json")
        self.storage = storage
        self.ttl = ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.what = what
        self.fs, self.path = filesystem(self.url, storage)
        self.local = self.url.startswith("/") or self.url.startswith("file://")
        self.s3 = self.url.startswith(("s3://", "s3a://"))
        # The heartbeat's requests are tried once and bounded in time (S3: each call as a whole, too): its
        # own loop retries them, and must see the lease's expiry coming rather than wait inside botocore
        # (60 s timeouts, backoff).
        quick = max(1.0, ttl / 15)
        self._beat_fs = filesystem(self.url, storage.model_copy(update={"retries": 0}), timeout=quick)[0]
        self._beat_bound = {"timeout": quick} if self.s3 else {}
        self.expires = 0.0  # the expiry of the last lease we wrote
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> Holder:
        return Holder(self.url, self.storage, self.owner)

    # contents
    def _payload(self, expires: float) -> bytes:
        return json.dumps({"owner": self.owner, "command": self.what, "heartbeat": expires - self.ttl,
                           "expires": expires}).encode()

    def read(self, beat: bool = False) -> tuple[dict[str, Any] | None, str | None]:
        """The lease on storage and its version tag (S3 ETag), or (None, None) when there is none;
        `beat`: with the heartbeat's bounded requests."""
        fs, bound = (self._beat_fs, self._beat_bound) if beat else (self.fs, {})
        try:
            if self.s3:
                info = fs.info(self.path, refresh=True, **bound)
                return json.loads(fs.cat_file(self.path, **bound)), info.get("ETag")
            return json.loads(fs.cat_file(self.path)), None
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:  # a torn write of a foreign tool: treat as expired
            return {"owner": "?", "expires": 0}, None

    # atomic primitives per store
    def _create(self) -> bool:
        expires = time.time() + self.ttl
        data = self._payload(expires)
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        elif self.s3:
            try:
                self.fs.pipe_file(self.path, data, IfNoneMatch="*")
            except (FileExistsError, OSError) as err:
                if isinstance(err, FileExistsError) or _refused(err):
                    return False
                raise
        else:
            if self.fs.exists(self.path):
                return False
            self.fs.pipe_file(self.path, data)
            time.sleep(1.0)
            held, _ = self.read()
            if not held or held.get("owner") != self.owner:
                return False
        self._won(expires)
        return True

    def _won(self, expires: float) -> None:
        """The lease is ours from now until `expires`."""
        self.expires = expires
        _HELD.add(self.owner)

    def _swap(self, etag: str | None, data: bytes, beat: bool = False) -> bool:
        """S3: overwrite the lease only if its ETag is still `etag`; False when it is not. A failure on
        the way (the store unreachable) raises: it says nothing about who holds the lease."""
        fs, bound = (self._beat_fs, self._beat_bound) if beat else (self.fs, {})
        try:
            fs.pipe_file(self.path, data, IfMatch=etag, **bound)
        except TRANSIENT as err:
            if _refused(err):
                return False
            raise
        return True

    def _renew(self, etag: str | None) -> bool:
        """Push our expiry forward (we hold the lease: it has not expired, so nobody took it over)."""
        expires = time.time() + self.ttl
        data = self._payload(expires)
        if self.s3:
            if not self._swap(etag, data, beat=True):
                return False
        elif self.local:
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, self.path)
        else:
            self._beat_fs.pipe_file(self.path, data)
        self.expires = expires
        return True

    def _take_over(self, expected: dict[str, Any], etag: str | None) -> bool:
        """Replace an expired lease only if it is still `expected`: of two takers one wins."""
        if self.s3:
            expires = time.time() + self.ttl
            if not self._swap(etag, self._payload(expires)):
                return False
            self._won(expires)
            return True
        if self.local:
            moved = f"{self.path}.{uuid.uuid4().hex}.old"
            try:
                os.rename(self.path, moved)  # atomic: of two takers only one moves the file
            except FileNotFoundError:
                return False
            with open(moved, "rb") as handle:
                same = json.loads(handle.read() or b"{}") == expected
            if not same:  # someone replaced it between our read and our rename: put theirs back
                try:
                    os.link(moved, self.path)
                except FileExistsError:
                    pass
                os.remove(moved)
                return False
            os.remove(moved)
            return self._create()
        held, _ = self.read()
        if held != expected:
            return False
        self.fs.rm(self.path)
        return self._create()

    # public
    def acquire(self) -> None:
        """Take the lease, taking over a stale one (see the module docstring); raise LeaseHeld naming the
        holder otherwise."""
        for _ in range(3):
            if self._create():
                break
            held, etag = self.read()
            if held is None:
                continue
            owner = str(held.get("owner", ""))
            alive, now = holder_alive(owner), time.time()
            left = held.get("expires", 0) - now
            if alive or (alive is None and left > 0):
                state = (f"expires in {left:.0f} s" if left > 0 else
                         f"expired {-left:.0f} s ago, but its process is alive on this host")
                raise LeaseHeld(f"{self.url} is held by {owner} ({held.get('command')}, heartbeat "
                                f"{now - held.get('heartbeat', 0):.0f} s ago, {state}); another run is writing "
                                f"this run directory, try again later")
            if self._take_over(held, etag):
                print(f"lease: took over the stale lease of {owner} on {self.url}")
                break
        else:
            raise LeaseHeld(f"{self.url}: could not take the lease (it changed hands while we tried)")
        self.lost = None
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        """Renew every ttl/3. A read or renewal that fails on the way is retried every ttl/15 while the
        lease has time left; the lease is lost when it would expire first, or when another owns it."""
        wait = self.ttl / 3
        while not self._stop.wait(wait):
            try:
                held, etag = self.read(beat=True)
                why = _lost_why(held, self.owner, time.time())
                if why is None and not self._renew(etag):
                    why = "lease.json changed between its read and its renewal"
            except TRANSIENT as err:
                retry = self.ttl / 15
                if time.time() + retry < self.expires:
                    wait = retry
                    continue
                why = f"it could not be renewed before it expired: {type(err).__name__}: {err}"
            if why:
                self.lost = f"{self.url.rsplit('/', 1)[0]}: lost the lease ({why})"
                return
            wait = self.ttl / 3

    def check(self) -> None:
        """Raise LeaseLost when the heartbeat lost the lease, or lease.json is no longer ours: write
        nothing further."""
        if self.lost:
            raise LeaseLost(f"{self.lost}; stopped before the next commit, run the command again to resume")
        self.holder.check()

    def release(self) -> None:
        """Stop the heartbeat and delete the lease if it is still ours. A store that cannot be reached
        now leaves it to expire (one line says so), rather than hide why the command ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _HELD.discard(self.owner)
        try:
            held, _ = self.read()
            if held and held.get("owner") == self.owner:
                self.fs.rm(self.path)
        except TRANSIENT as err:
            print(f"lease: could not release {self.url} ({type(err).__name__}: {err}); it expires by itself",
                  file=sys.stderr)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
