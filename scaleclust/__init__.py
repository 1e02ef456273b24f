"""scaleclust: cluster web-scale image collections by meaning.

The Python API (scaleclust.api): `scaleclust.run(config)` runs the pipeline, `scaleclust.open(run_dir)`
reads a run. Imported on first use, so `import scaleclust.cluster` and the CLI's start stay light."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Run", "open", "run"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from scaleclust import api

        return getattr(api, name)
    raise AttributeError(f"module 'scaleclust' has no attribute {name!r}")
