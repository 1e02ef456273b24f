"""One live progress bar per stage (tqdm, on stderr): done of total, rate and ETA.

The rate and ETA are tqdm's exponential moving average of recent updates, so the start-up of a stage
(actors loading a model) does not inflate the ETA once rows flow.
"""
from __future__ import annotations

import sys


class Progress:
    def __init__(self, stage: str, total: int | None, unit: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=stage, unit=f" {unit}", unit_scale=True, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 10.0)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def set_total(self, total: int) -> None:
        """Revise the total (e.g. once more shards' row counts are known)."""
        self.bar.total = max(total, self.bar.n)
        self.bar.refresh()

    def note(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        self.bar.close()
