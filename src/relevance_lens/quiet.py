"""One readable console per command: other libraries' progress bars, info logs and warnings kept out.

The tool shows its own progress (rich) and its own warnings (``relevance_lens`` categories, one
line each). transformers and huggingface_hub progress bars ("Loading weights", "Writing model
shards") and their info logs are switched off through their environment settings before they are
imported; warnings raised in other libraries (transformers' ``FutureWarning``s, matplotlib's layout
notes) go to a log file: the run folder's ``logs/libraries.log`` while a run trains, else the one
named by :func:`library_log` (``RELEVANCE_LENS_LIBRARY_LOG``), else nowhere. Set
``RELEVANCE_LENS_LIBRARY_LOG=-`` to see them on stderr as Python prints them.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOG_ENV = "RELEVANCE_LENS_LIBRARY_LOG"

#: Environment settings read by the libraries at import: no progress bars, errors only.
LIBRARY_ENV = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}

_state: dict = {"log": None, "installed": False}


def quiet_libraries() -> None:
    """Keep other libraries' bars, logs and warnings off the console (see the module doc).

    Settings the user made in the environment win. Call before transformers is imported: its
    progress-bar switch is read once, at import (it is set here too if it already was).
    """
    for key, value in LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    if "transformers" in sys.modules:  # imported already: switch its bars and logs off directly
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    if os.environ.get(LOG_ENV) == "-" or _state["installed"]:
        return
    warnings.showwarning = _show
    _state["installed"] = True


def library_log() -> Path | None:
    """Where other libraries' warnings go now (None: dropped)."""
    if _state["log"] is not None:
        return _state["log"]
    value = os.environ.get(LOG_ENV)
    return Path(value) if value and value != "-" else None


@contextmanager
def library_warnings_to(path: Path) -> Iterator[None]:
    """Send other libraries' warnings to ``path`` (appended) for the duration, e.g. a run folder's log."""
    before = _state["log"]
    _state["log"] = Path(path)
    try:
        yield
    finally:
        _state["log"] = before


def _ours(category: type[Warning], filename: str) -> bool:
    return category.__module__.startswith("relevance_lens") or f"{os.sep}relevance_lens{os.sep}" in filename


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if _ours(category, str(filename)):
        sys.stderr.write(f"warning: {message}\n")  # one line, as our errors are
        return
    path = library_log()
    if path is None:
        return
    text = warnings.formatwarning(message, category, filename, lineno, line)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        pass  # a log that cannot be written must not stop the work


#: Width of a console that writes to a file or a CI log: rich's default there is 80 columns, which
#: cuts the result tables; a terminal keeps its own width.
FILE_WIDTH = 200


def console(stderr: bool = False):
    """A rich console for the tool's output: the terminal's width, or :data:`FILE_WIDTH` columns
    when the stream is a file or a pipe (``COLUMNS`` set by the user wins)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() or os.environ.get("COLUMNS") else FILE_WIDTH
    return Console(stderr=stderr, width=width)
