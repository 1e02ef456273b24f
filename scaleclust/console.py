"""What the command line shows: quiet by default (progress bars and short lines), everything with
--verbose (Ray's INFO logs, Ray Data's own progress bars, worker output, tracebacks)."""
from __future__ import annotations

import logging
import os
import sys
import traceback
import warnings

VERBOSE_ENV = "SCALECLUST_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "0") == "1"


def configure(verbose_output: bool) -> None:
    """Set the verbosity for this process and the Ray processes it starts (they inherit the env).

    Quiet: Ray's loggers at WARNING (no per-dataset 'Starting execution' / 'Execution plan' lines),
    Ray's deprecation warnings hidden, and the C++ core worker's log at ERROR+ only for real failures:
    its known-harmless error line about actor constructor arguments in the object store (Ray Data's
    actor pools always trigger it) is logged at that level, so the backend level is set to FATAL;
    failures still reach the driver as Python exceptions."""
    os.environ[VERBOSE_ENV] = "1" if verbose_output else "0"
    if verbose_output:
        return
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"ray(\..*)?$")
    warnings.filterwarnings("ignore", message=r".*(RayDeprecationWarning|is deprecated).*")


def quiet_ray_logs() -> None:
    """After ray is imported: its loggers' levels (ray configures them on import) and Ray Data's
    'progress bars disabled' notice."""
    if verbose():
        return
    for name in ("ray", "ray.data", "ray.train", "ray.tune", "ray.air"):
        logging.getLogger(name).setLevel(logging.ERROR if name == "ray.data" else logging.WARNING)


def expected_failure(err: BaseException, prog: str = "scaleclust") -> int:
    """An expected failure (missing run directory, unknown key, a stage's stated precondition): one line
    on stderr and exit 1; the traceback only with --verbose."""
    if verbose():
        traceback.print_exception(err, file=sys.stderr)
    text = str(err) if not isinstance(err, KeyError) else f"not found: {err}"
    print(f"{prog}: {text.splitlines()[0] if text else type(err).__name__}"
          + ("" if verbose() else "  (--verbose shows the traceback)"), file=sys.stderr)
    return 1
