"""Exclusive run directories: ``run.lock`` names the pid and host of the run that holds a directory.

A second run that targets a directory in use is refused at start (:class:`RunDirectoryInUse`, a
:class:`~trustml.errors.ConfigError` naming the directory, the owner and the fix); a lock whose pid is dead on this
host is stale and taken over. The lock is also an ``flock`` where the platform has one, so two runs that start at
the same instant cannot both take it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from trustml.errors import ConfigError

LOCK_FILE = "run.lock"
_HELD_LOCKS: dict[Path, RunLock] = {}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    if not Path("/proc").is_dir():  # not Linux: the signal check is all there is
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:  # it ended meanwhile
        return False


class RunDirectoryInUse(ConfigError):
    """Another live run holds the run directory's ``run.lock``."""


class RunLock:
    """Exclusive use of a run directory: ``<dir>/run.lock`` holds the owner's pid and host.

    :meth:`acquire` refuses (:class:`RunDirectoryInUse`) when the lock names a live process other than this one
    (or one on another host); a lock left by a dead process is taken over. The lock file is also ``flock``-ed
    while held, so two runs starting at the same instant cannot both take it. Re-acquiring a directory this
    process already holds is a no-op that returns ``False``.
    """

    def __init__(self, run_dir: str | Path, option: str = "hydra.run.dir") -> None:
        self.run_dir = Path(run_dir).absolute()
        self.path = self.run_dir / LOCK_FILE
        self.option = option
        self._fd: int | None = None

    def _unusable(self, exc: OSError) -> ConfigError:
        """The error for a run directory that cannot be created or written."""
        return ConfigError(
            f"cannot use {self.run_dir} as the run directory ({self.option}): {exc.strerror or exc}"
            f"{f' ({exc.filename})' if exc.filename and str(exc.filename) != str(self.run_dir) else ''}; "
            f"set {self.option} to a writable directory"
        )

    def acquire(self) -> bool:
        """Take the lock; ``True`` when newly taken, ``False`` when this process already held it."""
        if self.run_dir in _HELD_LOCKS:
            return False
        try:
            import fcntl
        except ImportError:  # not POSIX: the pid check alone
            fcntl = None  # type: ignore[assignment]
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    if fcntl is not None:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = self._read_owner(fd)
                    os.close(fd)
                    raise self._in_use(owner) from None
                if os.path.exists(self.path) and os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
                os.close(fd)  # the file was removed and recreated meanwhile: lock the current one
            owner = self._read_owner(fd)
            if owner is not None and not self._stale(owner):
                os.close(fd)
                raise self._in_use(owner)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            os.fsync(fd)
        except RunDirectoryInUse:
            raise
        except OSError as exc:
            raise self._unusable(exc) from None
        self._fd = fd
        _HELD_LOCKS[self.run_dir] = self
        return True

    @staticmethod
    def _read_owner(fd: int) -> tuple[int, str] | None:
        """``(pid, host)`` from the lock file, or ``None`` when it is empty or unreadable."""
        text = os.pread(fd, 256, 0).decode(errors="replace").split()
        if not text or not text[0].isdigit():
            return None
        return int(text[0]), text[1] if len(text) > 1 else socket.gethostname()

    @staticmethod
    def _stale(owner: tuple[int, str]) -> bool:
        """Whether a lock naming ``owner`` may be taken over (dead pid on this host, or this process)."""
        pid, host = owner
        if host != socket.gethostname():
            return False  # cannot tell from here: treat as alive
        return pid == os.getpid() or not pid_alive(pid)

    def _in_use(self, owner: tuple[int, str] | None) -> RunDirectoryInUse:
        """The error for a run directory another live run holds."""
        who = f"pid {owner[0]} on {owner[1]}" if owner else "another process"
        return RunDirectoryInUse(
            f"the run directory {self.run_dir} is in use by another trustml run ({who}; lock file {self.path}); "
            f"choose another {self.option}, or wait for that run to end (delete the lock file only if that process "
            f"is not a trustml run)"
        )

    def release(self) -> None:
        """Remove the lock file (if it still names this process) and unlock."""
        if self._fd is None:
            return
        try:
            owner = self._read_owner(self._fd)
            if owner is not None and owner[0] == os.getpid():
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None
            _HELD_LOCKS.pop(self.run_dir, None)


def release_all_locks() -> None:
    """Release every run-directory lock this process holds."""
    for lock in list(_HELD_LOCKS.values()):
        lock.release()
