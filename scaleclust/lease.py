"""One writer per run directory: a lease object RUN/lease.json with an owner, an expiry and a heartbeat.

Taking the lease is an atomic create-if-absent:
- local disk: `os.open(O_CREAT | O_EXCL)`;
- S3: a conditional PUT (`If-None-Match: *`); a heartbeat or a takeover is a compare-and-swap PUT
  (`If-Match: ETAG` of the lease it read), so of two runs that find the same expired lease only one
  replaces it;
- other stores (gs://, ...): write, wait, read back and compare owners. Two writers within that window
  can both believe they won: on such stores run one scheduler per run directory.
A lease expires `ttl` seconds after its last heartbeat; a thread renews it every ttl/3. A run killed
without releasing leaves a lease that expires and is taken over by the next run; on the same host, where
the holder's process can be checked, a lease whose process is gone is taken over at once (so re-running
a killed job does not wait out the ttl). Deleting a released
lease checks the owner first (not atomic on local disk or S3; it only runs when the holder finishes).
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Any

from scaleclust.config import StorageConfig
from scaleclust.storage import filesystem, join

TTL_SECONDS = 120.0


class LeaseHeld(RuntimeError):
    """Another run holds the run directory's lease."""


def holder_gone(owner: str) -> bool:
    """Whether an owner `HOST:PID:TOKEN` names a process of this host that no longer exists. A process of
    another host cannot be checked: only its lease's expiry tells."""
    host, _, rest = owner.rpartition(":")[0].rpartition(":")
    if host != socket.gethostname() or not rest.isdigit():
        return False
    try:
        os.kill(int(rest), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


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
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # contents
    def _payload(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "command": self.what, "heartbeat": now,
                           "expires": now + self.ttl}).encode()

    def read(self) -> tuple[dict[str, Any] | None, str | None]:
        """The lease on storage and its version tag (S3 ETag), or (None, None) when there is none."""
        try:
            if self.s3:
                info = self.fs.info(self.path, refresh=True)
                return json.loads(self.fs.cat_file(self.path)), info.get("ETag")
            return json.loads(self.fs.cat_file(self.path)), None
        except FileNotFoundError:
            return None, None
        except json.JSONDecodeError:  # a torn write of a foreign tool: treat as expired
            return {"owner": "?", "expires": 0}, None

    # atomic primitives per store
    def _create(self) -> bool:
        data = self._payload()
        if self.local:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            return True
        if self.s3:
            try:
                self.fs.pipe_file(self.path, data, IfNoneMatch="*")
            except (FileExistsError, OSError) as err:
                if isinstance(err, FileExistsError) or "pre-condition" in str(err).lower():
                    return False
                if isinstance(err, FileNotFoundError):  # the first write of a run: name the run and the bucket
                    raise FileNotFoundError(f"{self.url}: cannot write the run directory: {err} (bucket "
                                            f"{self.path.split('/')[0]}); create it or point run_dir at one that "
                                            "exists") from None
                raise
            return True
        if self.fs.exists(self.path):
            return False
        self.fs.pipe_file(self.path, data)
        time.sleep(1.0)
        held, _ = self.read()
        return bool(held) and held.get("owner") == self.owner

    def _swap(self, etag: str | None) -> bool:
        """S3: overwrite the lease only if its ETag is still `etag`."""
        try:
            self.fs.pipe_file(self.path, self._payload(), IfMatch=etag)
        except OSError:
            return False
        return True

    def _renew(self, etag: str | None) -> bool:
        """Push our expiry forward (we hold the lease: it cannot have expired in between)."""
        if self.s3:
            return self._swap(etag)
        if self.local:
            tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as handle:
                handle.write(self._payload())
            os.replace(tmp, self.path)
            return True
        self.fs.pipe_file(self.path, self._payload())
        return True

    def _take_over(self, expected: dict[str, Any], etag: str | None) -> bool:
        """Replace an expired lease only if it is still `expected`: of two takers one wins."""
        if self.s3:
            return self._swap(etag)
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
        """Take the lease, taking over an expired one; raise LeaseHeld naming the holder otherwise."""
        for _ in range(3):
            if self._create():
                break
            held, etag = self.read()
            if held is None:
                continue
            if held.get("expires", 0) > time.time() and not holder_gone(str(held.get("owner", ""))):
                left = held["expires"] - time.time()
                raise LeaseHeld(f"{self.url} is held by {held.get('owner')} ({held.get('command')}, "
                                f"heartbeat {time.time() - held.get('heartbeat', 0):.0f} s ago, expires in "
                                f"{left:.0f} s); another run is writing this run directory, try again later")
            if self._take_over(held, etag):
                print(f"lease: took over the stale lease of {held.get('owner')} on {self.url}")
                break
        else:
            raise LeaseHeld(f"{self.url}: could not take the lease (it changed hands while we tried)")
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            held, etag = self.read()
            if not held or held.get("owner") != self.owner:
                self.lost = f"lost the lease of {self.url} to {held.get('owner') if held else 'nobody'}"
                return
            if not self._renew(etag):
                self.lost = f"could not renew the lease of {self.url}"
                return

    def check(self) -> None:
        """Raise LeaseHeld when the heartbeat found the lease taken over: write nothing further."""
        if self.lost:
            raise LeaseHeld(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        held, _ = self.read()
        if held and held.get("owner") == self.owner:
            self.fs.rm(self.path)

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
