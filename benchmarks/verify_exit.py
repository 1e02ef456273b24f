"""How often `scaleclust verify RUN --deep` ends without a clean exit, over N fresh processes.

    PYTHONPATH=. python benchmarks/verify_exit.py [N]      (default 50)

Prints one JSON line per run ({"run", "exit", "seconds"}) and a summary line with the count of unclean
exits. The abort it guards against ("terminate called without an active exception", exit 134) came at
interpreter shutdown, so only separate processes can show it."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.runs import committed_run  # noqa: E402


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        run = committed_run(Path(folder))
        unclean = 0
        for i in range(n):
            started = time.time()
            done = subprocess.run([sys.executable, "-m", "scaleclust.cli", "verify", run, "--deep"],
                                  capture_output=True, text=True)
            clean = done.returncode == 0 and "terminate called" not in done.stderr
            unclean += not clean
            print(json.dumps({"run": i, "exit": done.returncode, "seconds": round(time.time() - started, 2)}), flush=True)
        print(json.dumps({"runs": n, "unclean_exits": unclean}))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
