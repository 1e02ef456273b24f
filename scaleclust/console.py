"""What the command line shows: quiet by default (progress bars and short lines), everything with
--verbose (Ray's INFO logs, Ray Data's own progress bars, worker output, tracebacks)."""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import traceback
import warnings

from scaleclust.failures import INTERNAL_EXIT

VERBOSE_ENV = "SCALECLUST_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


# Lines Ray's C++ core worker writes straight to the driver's stderr that say nothing wrong: Ray Data's
# actor pools always put their constructor arguments in the object store and allow restarts.
HARMLESS = re.compile(rb"^\[[^\]]* E \d+ \d+\] core_worker\.cc:\d+: Actor with class name: .* has constructor "
                      rb"arguments in the object store and max_restarts > 0")


def configure(verbose_output: bool) -> None:
    """Set the verbosity for this process and the Ray processes it starts (they inherit the env).

    Quiet: Ray's loggers at WARNING (no per-dataset 'Starting execution' / 'Execution plan' lines) and
    Ray's deprecation warnings hidden."""
    os.environ[VERBOSE_ENV] = "1" if verbose_output else "0"
    if verbose_output:
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*(RayDeprecationWarning|is deprecated).*")


def filter_stderr(drop: re.Pattern[bytes] = HARMLESS) -> None:
    """Route file descriptor 2 (C++ code writes there directly, past Python's logging) through a thread
    that drops whole lines matching `drop` and passes everything else on at once. Only lines that start
    with '[' (a C++ log line) are held until their newline, so progress bars still redraw live."""
    real = os.dup(2)
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)

    def pump() -> None:
        held = b""
        while chunk := os.read(read, 65536):
            held += chunk
            *lines, held = held.split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not drop.match(line))
            if held and not held.startswith(b"["):
                out, held = out + held, b""
            if out:
                os.write(real, out)
        if held and not drop.match(held):
            os.write(real, held)

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(real, 2)  # closes the pipe's last write end: the pump reads EOF and drains
        thread.join(timeout=5)

    atexit.register(restore)


def quiet_ray_logs() -> None:
    """After ray is imported: its loggers' levels (ray configures them on import) and Ray Data's
    'progress bars disabled' notice."""
    if verbose():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR if name == "ray.data" else logging.WARNING)


def user_mistake(err: BaseException, line: str, code: int, prog: str = "scaleclust") -> int:
    """A user's mistake (a bad config, a missing run directory, missing credentials, a held lease): one
    line on stderr and `code`; the traceback only with --verbose."""
    if verbose():
        traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: {line or type(err).__name__}", file=sys.stderr)
    return code


INTERNAL_HINT = "a bug in scaleclust, not in the input: please report it with the traceback above"


def internal_failure(err: BaseException, prog: str = "scaleclust") -> int:
    """Anything that is not a user's mistake is a bug: its full traceback, a line saying so, exit 4."""
    traceback.print_exception(err, file=sys.stderr)
    print(f"{prog}: internal error {type(err).__name__}: {INTERNAL_HINT}", file=sys.stderr)
    return INTERNAL_EXIT
