"""Exclusive locks on lock files, so one unit of work (a training run, a study cell) is never
done by two processes at once.

A lock is an ``fcntl.flock`` on a small file; the kernel drops it when its process dies,
SIGKILL included, so a dead holder never blocks anyone. The holder writes its pid and host
into the file, so a refused process can say who holds it. Lock files are left in place
(deleting one while another process waits on it would let two processes hold "the" lock).

Within one process a lock is re-entrant per thread: a study holding a run's lock may call
:func:`relevance_lens.train.trainer.train`, which takes the same lock again. Another thread,
or a child made by ``fork``, is another holder and is refused like another process. Locks on
NFS work where the server supports them (Linux maps ``flock`` to NFS byte-range locks).
"""

from __future__ import annotations

import fcntl
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relevance_lens.errors import InputError

#: Seconds between tries while waiting with a timeout.
POLL = 0.05

_held: dict[tuple[str, int, int], list[int]] = {}  # (path, pid, thread) -> [fd, depth]
_guard = threading.Lock()


class Busy(InputError):
    """The lock is held by another process (or thread); ``holder`` says which, when known."""

    def __init__(self, message: str, path: Path, holder: str) -> None:
        super().__init__(message)
        self.path, self.holder = path, holder


def lock_file(path: str | Path) -> Path:
    """The lock file of a folder or file: ``.<name>.lock`` beside it (outside it, so a lock
    never makes an empty output folder non-empty)."""
    path = Path(path)
    return path.parent / f".{path.name}.lock"


def holder(path: str | Path) -> str:
    """Who holds (or last held) the lock at ``path``: ``pid N on HOST``, or ``an unknown process``."""
    try:
        words = Path(path).read_text().split()
    except OSError:
        words = []
    return f"pid {words[0]} on {words[1]}" if len(words) >= 2 else "an unknown process"


class FileLock:
    """An exclusive lock on the file ``path`` (created, with its folder, on first use)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _key(self) -> tuple[str, int, int]:
        return (os.path.abspath(self.path), os.getpid(), threading.get_ident())

    def acquire(self, timeout: float | None = 0) -> bool:
        """Take the lock; returns whether it was taken.

        ``timeout`` 0 tries once, a positive number keeps trying for that many seconds,
        None waits as long as the holder lives.
        """
        key = self._key()
        with _guard:
            if key in _held:
                _held[key][1] += 1
                return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # O_RDWR without O_TRUNC: opening must not erase the current holder's pid.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not _lock(fd, timeout):
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        with _guard:
            _held[key] = [fd, 1]
        return True

    def release(self) -> None:
        """Drop one level of this thread's hold; the last one unlocks the file."""
        key = self._key()
        with _guard:
            entry = _held.get(key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1]:
                return
            del _held[key]
        os.ftruncate(entry[0], 0)  # a finished holder is nobody's holder
        fcntl.flock(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])

    def held(self) -> bool:
        """Whether this thread holds the lock."""
        with _guard:
            return self._key() in _held


def _lock(fd: int, timeout: float | None) -> bool:
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # interruptible: Ctrl-C raises KeyboardInterrupt here
        return True
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)


@contextmanager
def exclusive(path: str | Path, what: str, timeout: float | None = 0, hint: str = "") -> Iterator[FileLock]:
    """Hold the lock at ``path`` for the ``with`` body, or raise :class:`Busy` in one line:
    ``WHAT: in use by pid N on HOST (lock PATH)`` plus ``hint``.

    ``timeout`` as in :meth:`FileLock.acquire` (0: fail at once).
    """
    lock = FileLock(path)
    if not lock.acquire(timeout):
        who = holder(path)
        waited = f" after waiting {timeout:g} s" if timeout else ""
        raise Busy(f"{what}: in use by {who}{waited} (lock {path}){'; ' + hint if hint else ''}", Path(path), who)
    try:
        yield lock
    finally:
        lock.release()
