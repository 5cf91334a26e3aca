"""Atomic writes: build beside the target, then rename into place.

A crash (Ctrl-C, kill -9, full disk) at any point leaves either the old version or the
new one, never a half-written folder that looks valid.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
ASIDE = f"{TMP_PREFIX}old-"  # a folder renamed aside while its replacement moves in
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    C library or the filesystem cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(src: Path, dest: Path) -> None:
    """Move a finished folder ``src`` to ``dest``, replacing any existing ``dest``.

    Where the OS can, the two folders are exchanged in one step, so ``dest`` never goes
    missing. Elsewhere the old one is first renamed aside (POSIX cannot rename over a
    non-empty folder); a crash in that window leaves the old folder aside, never a partial
    one, and ``restore_aside`` (called here and by ``clean_stale``) puts it back.
    """
    restore_aside(dest)
    if dest.exists() and _exchange(src, dest):
        fsync_dir(dest.parent)
        shutil.rmtree(src, ignore_errors=True)  # now the old folder
        return
    old: Path | None = None
    if dest.exists():
        old = dest.with_name(f"{ASIDE}{dest.name}-{uuid.uuid4().hex[:8]}")
        os.rename(dest, old)
    os.rename(src, dest)
    fsync_dir(dest.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _aside_of(entry: Path) -> Path | None:
    """The folder ``entry`` was renamed aside from (``.tmp-old-<name>-<8 hex>``), or None."""
    name = entry.name
    if not name.startswith(ASIDE) or len(name) < len(ASIDE) + 10 or name[-9] != "-":
        return None
    return entry.with_name(name[len(ASIDE) : -9])


def restore_aside(dest: Path) -> bool:
    """Put back a folder that a crash left renamed aside while ``dest`` was missing."""
    if dest.exists() or not dest.parent.is_dir():
        return False
    for entry in sorted(dest.parent.glob(f"{ASIDE}*")):
        if _aside_of(entry) == dest:
            os.rename(entry, dest)
            fsync_dir(dest.parent)
            return True
    return False


def clean_stale(parent: Path) -> int:
    """Remove leftovers of interrupted writes (folders/files starting with ``.tmp-``)."""
    n = 0
    if not parent.is_dir():
        return 0
    for p in list(parent.iterdir()):
        target = _aside_of(p)
        if target is not None and restore_aside(target):
            continue  # the old folder of an interrupted replacement: back in place
        if p.name.startswith(TMP_PREFIX):
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            n += 1
    return n
