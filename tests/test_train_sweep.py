"""The Train worker's sweep of local checkpoint folders that killed workers left (no Ray: the sweep alone)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from scaleclust.train.loop import local_checkpoint_prefix, sweep_local_checkpoints


def test_only_the_folders_of_processes_that_are_gone_are_removed(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1
    dead = [tmp_path / (local_checkpoint_prefix(pid) + "a") for pid in (gone, 2 ** 40)]  # 2**40: no C pid_t
    live = tmp_path / (local_checkpoint_prefix(os.getpid()) + "b")
    for folder in (*dead, live):
        folder.mkdir()
        (folder / "state.pt").write_bytes(b"0" * 100)
    plain = tmp_path / (local_checkpoint_prefix(gone) + "file")  # not a folder: left, never reported
    plain.write_text("x")
    link = tmp_path / (local_checkpoint_prefix(gone) + "link")  # a link to a live worker's folder: left
    link.symlink_to(live)
    other = tmp_path / "scaleclust-ckpt-abc"  # not named by a process id
    other.mkdir()
    assert sorted(sweep_local_checkpoints()) == sorted(map(str, dead))
    assert not any(folder.exists() for folder in dead)
    assert live.exists() and plain.exists() and link.is_symlink() and other.exists()
    assert (live / "state.pt").exists()
    assert sweep_local_checkpoints() == []  # nothing is reported twice
