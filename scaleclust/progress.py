"""Progress lines for long stages: done / total, rate and ETA, printed as work is committed."""
from __future__ import annotations

import time


class Progress:
    def __init__(self, stage: str, total: int, unit: str) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = 0
        self.rows = 0
        self.start = time.time()

    def step(self, rows: int = 0, note: str = "") -> None:
        self.done += 1
        self.rows += rows
        elapsed = max(time.time() - self.start, 1e-9)
        eta = (self.total - self.done) * elapsed / self.done
        print(f"{self.stage}: {self.done}/{self.total} {self.unit}, {self.rows / elapsed:.1f} rows/s, "
              f"ETA {eta:.0f} s  {note}", flush=True)
