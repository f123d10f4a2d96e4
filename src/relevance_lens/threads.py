"""Size torch's thread pool to the cores this process shares with other relevance-lens processes.

Two ``train`` processes on a 2-core machine, each with torch's default of one thread per core,
ran at 45 s a step each instead of about 4.6 (#16): two OpenMP pools that each think they own
every core spin against each other. So each working process registers itself in a folder shared
by the machine's relevance-lens processes (a file it holds an ``fcntl.flock`` on; the kernel drops
the lock when the process dies, SIGKILL included, so a file nobody holds is a dead process's) and
takes its share of the cores: those available to it divided by the live processes, at least one,
and never more than it had when it started (so ``torch.set_num_threads`` or ``OMP_NUM_THREADS``
set by the user stay a ceiling). Under torchrun the processes on one node are at least
``LOCAL_WORLD_SIZE``. The share is fitted again at every training step and scoring chunk, so a
process gives back cores when another one starts and takes them again when it ends.

``RELEVANCE_LENS_THREADS=N`` pins N threads (for timings, or bit-for-bit reruns: a float sum's
order can change with the thread count); ``RELEVANCE_LENS_THREADS=off`` leaves torch alone.
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from relevance_lens.errors import InputError

ENV = "RELEVANCE_LENS_THREADS"
#: Where the live processes register; one folder per user (each user's processes share the cores too,
#: but cannot read each other's locks in a 0700 folder).
DIR_ENV = "RELEVANCE_LENS_CORES_DIR"

log = logging.getLogger(__name__)
_state: dict = {"depth": 0, "fd": None, "ceiling": None, "file": None}
_guard = threading.Lock()


def registry() -> Path:
    """The folder where live processes register."""
    return Path(os.environ.get(DIR_ENV) or Path(tempfile.gettempdir()) / f"relevance-lens-{os.getuid()}" / "cores")


def cores_available() -> int:
    """Cores this process may run on (its affinity mask, as taskset or a container's cpuset gives it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def pinned() -> int | None:
    """Threads pinned by ``RELEVANCE_LENS_THREADS=N``; 0 for ``off``; None for the default (share)."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value == "off":
        return 0
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise InputError(f"{ENV}={os.environ[ENV]!r}: expected a positive number of threads, auto or off")


def live_processes() -> int:
    """Registered processes that are alive (this one included when registered); removes dead ones' files."""
    folder = registry()
    live = 0
    for path in folder.glob("*.cores") if folder.is_dir() else ():
        if _state["file"] is not None and path == _state["file"]:
            live += 1
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            live += 1  # its process holds it
        else:
            path.unlink(missing_ok=True)  # nobody holds it: its process died
        finally:
            os.close(fd)
    return live


def fair_share() -> int:
    """Threads this process should use now (see the module doc)."""
    sharers = max(live_processes(), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)
    share = max(1, cores_available() // sharers)
    ceiling = _state["ceiling"]
    return min(share, ceiling) if ceiling else share


def fit() -> int:
    """Set torch's thread pool to this process's share now; returns the thread count in use."""
    import torch

    want = pinned()
    if want == 0 or _state["depth"] == 0:
        return torch.get_num_threads()
    want = want or fair_share()
    if want != torch.get_num_threads():
        sharers = live_processes()
        log.info("%d relevance-lens processes share %d cores: %d torch threads", sharers, cores_available(), want)
        torch.set_num_threads(want)
    return want


@contextmanager
def share_cores() -> Iterator[int]:
    """Register this process as working for the duration; yields the thread count it starts with.

    Re-entrant (a study's training cell calls :func:`~relevance_lens.train.trainer.train`, which
    shares again); on leaving the outermost, the registration is dropped and torch gets back the
    thread count it had before.
    """
    import torch

    with _guard:
        outermost = _state["depth"] == 0
        if outermost:
            _state["ceiling"] = torch.get_num_threads()
            if pinned() is None:
                _register()
        _state["depth"] += 1
    try:
        yield fit()
    finally:
        with _guard:
            if _state["depth"] == 1:  # (0 in a child forked inside the block: not its registration)
                _unregister()
                torch.set_num_threads(_state["ceiling"])
            _state["depth"] = max(0, _state["depth"] - 1)


def _register() -> None:
    folder = registry()
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    # Locked under a temporary name, then renamed: a file that another process can see is always
    # held, so it is never mistaken for a dead process's and removed (the lock follows the inode).
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{os.getpid()}-", suffix=".tmp", delete=False)
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    final = folder / f"{os.getpid()}-{Path(handle.name).stem.split('-', 1)[1]}.cores"
    os.rename(handle.name, final)
    _state["fd"], _state["file"] = handle, final


def _unregister() -> None:
    handle, path = _state["fd"], _state["file"]
    _state["fd"] = _state["file"] = None
    if handle is not None:
        path.unlink(missing_ok=True)
        handle.close()


def _forget_in_child() -> None:
    """A forked child is not the registered process: it closes its copy of the lock's file and
    registers itself if it works (the parent's lock stays the parent's)."""
    if _state["fd"] is not None:
        _state["fd"].close()
    _state.update(depth=0, fd=None, file=None, ceiling=None)


os.register_at_fork(after_in_child=_forget_in_child)
