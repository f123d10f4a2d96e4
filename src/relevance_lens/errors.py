"""One error type for everything a user can get wrong.

The CLI turns an :class:`InputError` into a single line on stderr and exit code 2;
library callers catch it like any ``ValueError``.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a malformed file line, an unknown id, an impossible setting.

    The message names the file and line (``path:line: what was found; what was expected``)
    or the setting (``--rank 0: expected a positive integer``).
    """


def at(path: object, line: int | str | None, message: str) -> InputError:
    """Build an :class:`InputError` located at ``path:line`` (or ``path:row N`` for a table's row)."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return InputError(f"{where}: {message}")
