"""Without Chromium the report's browser tests skip, and the run's summary says why in one line for all of
them; under SCALECLUST_REQUIRE_BROWSER=1 (as .ci/run sets) the same tests fail instead."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# A pytest run with the suite's conftest as a plugin and its Chromium path pointed at nothing.
RUN = ("import sys, pytest, tests.conftest as c; c.CHROMIUM = sys.argv[1]; "
       "sys.exit(pytest.main(['-q', '-ra', '-p', 'no:cacheprovider', '-p', 'tests.conftest', sys.argv[2]]))")
BROWSER_TESTS = """import pytest

@pytest.mark.browser
@pytest.mark.parametrize("page", ["overview", "cluster"])
def test_page(chromium, page):
    assert chromium
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("required", [False, True])
def test_browser_tests_skip_in_one_line_without_chromium(tmp_path: Path, required: bool) -> None:
    for name in ("test_pages.py", "test_more_pages.py"):  # two files: one summary line still
        (tmp_path / name).write_text(BROWSER_TESTS)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "SCALECLUST_REQUIRE_BROWSER": "1" if required else ""}
    done = subprocess.run([sys.executable, "-c", RUN, str(tmp_path / "no-chromium"), str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout
    if required:
        assert done.returncode == 1 and "4 errors" in out, out[-2000:]
        assert "SCALECLUST_REQUIRE_BROWSER=1 requires them" in out
        return
    assert done.returncode == 0 and "4 skipped" in out, out[-2000:]
    reasons = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert len(reasons) == 1 and reasons[0].startswith("SKIPPED [4] ") and "no Chromium at" in reasons[0], reasons
