"""Files written atomically: a reader (or a crash, a kill, a full disk) never sees half a file under its final name.

Each write goes to ``<name>.tmp`` beside the final name, is flushed and fsync-ed, renamed onto the final name
(atomic on POSIX), and the directory entry is fsync-ed; on any failure the temporary file is removed and the
previous file of that name, if any, stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any


def fsync_directory(directory: Path) -> None:
    """Flush a directory entry (a rename) to disk; a filesystem that cannot fsync directories is left as is."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via ``<path>.tmp``: write, fsync, rename, fsync the directory.

    On any failure (disk full included) the temporary file is removed and the previous ``path``, if any, is
    left untouched; the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # a failed write() names no file: name the one being written
        raise
    fsync_directory(path.parent)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`write_bytes_atomic`): readers never see half a file."""
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode())
