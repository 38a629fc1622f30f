"""Atomic writes: a crash mid-write leaves the old content complete."""

from __future__ import annotations

import json

import pytest

from privacy.durable_io import atomic_writer, replace_directory_atomic, write_json_atomic


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "metrics.json"
    write_json_atomic(target, {"round": 1})
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write('{"round": 2, "trunc')
        raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"round": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_nan_is_refused_not_written(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "m.json", {"epsilon": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_directory_swap_is_all_or_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "adapter"
    replace_directory_atomic(target, lambda d: (d / "a.txt").write_text("v1"))

    def broken(d):  # type: ignore[no-untyped-def]
        (d / "a.txt").write_text("v2")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_directory_atomic(target, broken)
    assert (target / "a.txt").read_text() == "v1"
    replace_directory_atomic(target, lambda d: (d / "b.txt").write_text("v3"))
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
