"""Atomic writes: build beside the target, then rename into place.

A crash (Ctrl-C, kill -9, full disk) at any point leaves either the old version or the
new one, never a half-written folder that looks valid.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename durable (best effort: not every filesystem supports it)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small file atomically (temp file in the same folder + os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def staging_dir(parent: Path, label: str = "") -> Iterator[Path]:
    """Yield a fresh temporary folder inside ``parent``; remove it unless it was moved away."""
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f"{TMP_PREFIX}{label}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_dir(src: Path, dest: Path) -> None:
    """Move a finished folder ``src`` to ``dest``, replacing any existing ``dest``.

    POSIX cannot rename over a non-empty folder, so the old one is first renamed aside;
    the window in between has no ``dest`` at all, never a partial one.
    """
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f"{TMP_PREFIX}old-{dest.name}-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    os.rename(src, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def clean_stale(parent: Path) -> int:
    """Remove leftovers of interrupted writes (folders/files starting with ``.tmp-``)."""
    n = 0
    if not parent.is_dir():
        return 0
    for p in parent.iterdir():
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            n += 1
    return n
