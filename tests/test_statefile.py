"""agent-state.json: round trip, damage reads as empty, and safe writes in a shared folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.outbox import Outbox
from agent.statefile import MAX_MARK, State, StateFile
from tests.test_outbox import ev


def test_statefile__round_trip_and_damage(tmp_path: Path) -> None:
    sf = StateFile(tmp_path / "agent-state.json")
    assert sf.load() == State(None, 0)
    sf.save(State("boot-1", 42))
    assert StateFile(tmp_path / "agent-state.json").load() == State("boot-1", 42)
    (tmp_path / "agent-state.json").write_text("{not json")
    assert sf.load() == State(None, 0)


def test_statefile__planted_symlink_at_the_old_temp_name_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    for name in (".agent-state.json.tmp", ".agent-state.json.tmp.tmp"):
        (tmp_path / name).symlink_to(victim)
    sf = StateFile(tmp_path / "agent-state.json")
    sf.save(State("boot-1", 7))
    assert victim.read_text() == "precious", "the state file write followed a planted symlink"
    assert sf.load() == State("boot-1", 7)
    assert not (tmp_path / "agent-state.json").is_symlink()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]
    assert leftovers == [], "temporary files must not be left behind"


def test_statefile__unwritable_folder_warns_once_and_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        sf = StateFile(folder / "agent-state.json")
        sf.save(State("b", 1))
        sf.save(State("b", 2))
        if os.geteuid() != 0:  # root writes anyway
            assert caplog.text.count("cannot write") == 1
    finally:
        folder.chmod(0o700)


def test_statefile__the_rename_is_made_durable_by_syncing_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file was synced and renamed, the folder never: a power cut could bring the older mark back."""
    import stat

    path = tmp_path / "agent-state.json"
    StateFile(path).save(State("b", 10))
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("sync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        calls.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", replace)
    StateFile(path).save(State("b", 15))
    assert calls == ["sync file", "rename", "sync folder"], calls


def test_statefile__the_mark_never_goes_down(tmp_path: Path) -> None:
    """Two threads save: the heartbeat read top 0 and renamed last, over a held event's saved mark of 1.
    A power cut then, and the restart gave seq 1 again.  (agent/daemon.py also saves under one lock.)"""
    sf = StateFile(tmp_path / "agent-state.json")
    sf.save(State("b", 1, 1.8e9, 10.0))
    sf.save(State("b", 0, None, None))  # the late, older save: test mode ended meanwhile
    assert sf.load() == State("b", 1, None, None)


@pytest.mark.parametrize("mark", [2**63 - 10, 2**62 + 1, -5, True, "12", 1.5])
def test_statefile__a_mark_out_of_range_is_ignored_and_the_outbox_still_opens(tmp_path: Path, mark: object) -> None:
    """A hand-edited or damaged mark past SQLite's INTEGER stopped every start (OverflowError)."""
    (tmp_path / "agent-state.json").write_text(json.dumps({"boot_id": "b", "last_seq": mark}))
    loaded = StateFile(tmp_path / "agent-state.json").load()
    assert loaded.last_seq == 0
    assert loaded.boot_id == "b"
    with Outbox(tmp_path / "outbox.db", site="s", device="d", seq_mark=loaded.last_seq) as ob:
        assert ob.put(ev()) == 1


def test_statefile__the_largest_mark_still_opens(tmp_path: Path) -> None:
    (tmp_path / "agent-state.json").write_text(json.dumps({"last_seq": MAX_MARK}))
    loaded = StateFile(tmp_path / "agent-state.json").load()
    assert loaded.last_seq == MAX_MARK
    with Outbox(tmp_path / "outbox.db", site="s", device="d", seq_mark=loaded.last_seq) as ob:
        assert ob.top_seq() >= MAX_MARK
