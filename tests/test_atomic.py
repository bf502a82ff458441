"""The one writer (layerprune.problems.atomic) and the lock files (layerprune.problems.locks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from layerprune.problems.atomic import (
    atomic_append_text,
    atomic_folder,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    is_temp_name,
    sweep_temps,
)
from layerprune.problems.locks import LockError, lock_path, output_lock


class Boom(RuntimeError):
    pass


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if is_temp_name(p.name) or ".tmp" in p.name)


def test_write_leaves_no_temp_file(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    atomic_write(tmp_path / "c.npz", lambda p: np.savez(p, x=np.arange(3)))
    assert (tmp_path / "a.txt").read_text() == "hello"
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}
    assert np.load(tmp_path / "c.npz")["x"].tolist() == [0, 1, 2]  # the temp name kept the .npz suffix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.npz"]


def test_exception_mid_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old content")

    def half_then_die(tmp):
        with open(tmp, "w") as f:
            f.write("new cont")
        raise Boom

    with pytest.raises(Boom):
        atomic_write(path, half_then_die)
    assert path.read_text() == "old content"
    assert _temps(tmp_path) == []

    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_text() == "old content" and _temps(tmp_path) == []


def test_concurrent_writers_never_mix(tmp_path):
    path = tmp_path / "shared.txt"
    contents = [str(i) * 200_000 for i in range(8)]
    errors = []

    def writer(text):
        try:
            for _ in range(5):
                atomic_write_text(path, text)
                seen = path.read_text()
                assert seen in contents, "a mixed file"
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(c,)) for c in contents]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_text() in contents
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.txt"]


def test_append_is_a_rewrite(tmp_path):
    path = tmp_path / "r.csv"
    atomic_append_text(path, "a,b\n")
    atomic_append_text(path, "1,2\n")
    assert path.read_text() == "a,b\n1,2\n" and _temps(tmp_path) == []


def test_folder_swap(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "one").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == ["one"]
    with atomic_folder(out) as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["two"]  # replaced whole
    with pytest.raises(Boom):
        with atomic_folder(out) as tmp:
            (tmp / "three").write_text("3")
            raise Boom
    assert sorted(p.name for p in out.iterdir()) == ["two"]  # the old folder survives a failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary siblings


def test_folder_swap_without_rename_exchange(tmp_path, monkeypatch):
    import layerprune.problems.atomic as atomic

    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # the two-rename fallback
    out = tmp_path / "out"
    with atomic_folder(out) as tmp:
        (tmp / "one").write_text("1")
    with atomic_folder(out) as tmp:
        (tmp / "two").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_sweep_removes_only_dead_writers_temps(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.npz.{dead.pid}.abcdefgh.tmp.npz"
    stale.write_text("torn")
    stale_dir = tmp_path / f".out.{dead.pid}.abcdefgh.tmpdir"
    stale_dir.mkdir()
    live = tmp_path / f".x.npz.{os.getpid()}.abcdefgh.tmp.npz"
    live.write_text("being written")
    removed = sweep_temps(tmp_path)
    assert sorted(p.name for p in removed) == sorted([stale.name, stale_dir.name])
    assert live.exists() and not stale.exists() and not stale_dir.exists()


# -- locks -------------------------------------------------------------------------------------
def test_second_lock_refuses_naming_the_pid(tmp_path):
    out = tmp_path / "out"
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        lock_path(out).write_text(json.dumps({"pid": sleeper.pid, "host": os.uname().nodename,
                                              "started": "now", "command": "layerprune prune"}))
        with pytest.raises(LockError, match=f"pid {sleeper.pid}"):
            with output_lock(out):
                pass
        assert json.loads(lock_path(out).read_text())["pid"] == sleeper.pid  # not touched
    finally:
        sleeper.kill()
        sleeper.wait()
    with output_lock(out) as held:  # the sleeper is dead now: a stale lock
        with pytest.raises(LockError, match=f"pid {os.getpid()}"):
            with output_lock(out):
                pass
        assert json.loads(held.read_text())["pid"] == os.getpid()
    assert not lock_path(out).exists()


def test_stale_lock_is_taken_over_with_a_warning(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    lock_path(out).write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename}))
    warnings = []
    with output_lock(out, command="test", warn=warnings.append) as held:
        info = json.loads(held.read_text())
        assert info["pid"] == os.getpid() and info["command"] == "test" and "started" in info and "host" in info
    assert len(warnings) == 1 and str(dead.pid) in warnings[0] and "stale" in warnings[0]
    assert not lock_path(out).exists()


def test_lock_released_after_an_exception(tmp_path):
    out = tmp_path / "out"
    for exc in (Boom, KeyboardInterrupt):
        with pytest.raises(exc):
            with output_lock(out):
                assert lock_path(out).exists()
                raise exc
        assert not lock_path(out).exists()


def test_lock_error_class_is_the_callers(tmp_path):
    class Mine(ValueError):
        pass

    with output_lock(tmp_path / "o"):
        with pytest.raises(Mine):
            with output_lock(tmp_path / "o", error=Mine):
                pass


def test_written_files_and_folders_get_the_umask_mode(tmp_path):
    import os
    import stat

    from layerprune.problems.atomic import atomic_folder, atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_folder(tmp_path / "model") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644  # not mkstemp's 0600
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # not mkdtemp's 0700
