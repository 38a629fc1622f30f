"""Crash-safe file writes: a reader sees the old file or the new one, never half of either.

Everything fedlora stores (metrics, adapters, checkpoints, ledgers, reports) goes through
here: write a temporary file in the target's directory, flush, fsync, rename over the
target, fsync the directory. Privacy accounting depends on it: a spend must be on disk
before the update it pays for leaves the node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename or a new file) to disk, where the OS allows it."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file that replaces ``path`` atomically when the block exits cleanly.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(target.parent)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace ``path`` with UTF-8 ``text`` atomically and durably."""
    with atomic_writer(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Replace ``path`` with pretty-printed JSON atomically and durably (NaN refused)."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, allow_nan=False) + "\n")


def replace_directory_atomic(target: str | Path, fill: Callable[[Path], None]) -> None:
    """Build a directory with ``fill(tmp_dir)`` and swap it in for ``target``.

    The old directory (if any) stays complete until the new one is fully written; a crash
    leaves either the old or the new version under ``target`` (plus a stray ``.tmp`` folder
    at worst, which the next call removes).
    """
    final = Path(target)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp")
    retired = final.with_name(f".{final.name}.old")
    for stale in (staging, retired):
        if stale.exists():
            shutil.rmtree(stale)
    staging.mkdir()
    try:
        fill(staging)
        for child in staging.iterdir():
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        fsync_directory(staging)
        if final.exists():
            os.replace(final, retired)
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired.exists() and not final.exists():
            os.replace(retired, final)
        raise
    fsync_directory(final.parent)
    shutil.rmtree(retired, ignore_errors=True)
