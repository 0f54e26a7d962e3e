"""Files that are replaced whole: a reader (or the next start after a crash) sees the old content or
the new one, never a part of either."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """A fresh temporary file beside ``path`` for the block to write (``pd.to_pickle(x, tmp)``);
    renamed over ``path`` when the block ends, removed when it raises."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically. ``durable``: the data and the rename are on disk
    (file and directory fsynced) when this returns, so a power cut keeps one of the two versions."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename or a new file in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
