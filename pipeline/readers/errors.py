"""File-level read failures: what makes a whole input file unreadable, and whether a retry may help.

Only format errors inside readable bytes become malformed rows (readers/base.py); a failure to READ
the file (an I/O or S3 error, a truncated .gz, a corrupt parquet footer) is InputUnreadable, which
the caption phase retries when transient and otherwise reports as a failed file, never as one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pyarrow as pa

T = TypeVar("T")


class InputUnreadable(RuntimeError):
    """A whole input file could not be read to its end: a file-level failure, never a row.

    `transient` says whether a retry may help (a filesystem or network error) or not (a truncated
    compressed stream, a corrupt parquet footer: the same bytes fail the same way every time).
    `rows_read` is how many rows were read before the failure, for the error message.
    """

    def __init__(self, path: str, rows_read: int, error: BaseException | str, transient: bool | None = None):
        self.path, self.rows_read = path, rows_read
        self.transient = is_transient(error) if transient is None else transient  # type: ignore[arg-type]
        self.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        kind = "transient read error" if self.transient else "unreadable file"
        super().__init__(f"{kind} in {path} after {rows_read} rows: {self.error}"[:2000])

    def __reduce__(self):  # crosses process boundaries (Ray) with its fields, not just its message
        return (InputUnreadable, (self.path, self.rows_read, self.error, self.transient))


_PERMANENT_HINTS = ("truncated", "corrupt", "magic bytes", "invalid", "not a parquet", "unexpected end")


def is_transient(error: BaseException | str) -> bool:
    """An OSError (I/O, S3, network) may go away on retry; format errors in the bytes do not."""
    if isinstance(error, EOFError) or not isinstance(error, OSError):
        return False
    return not any(hint in str(error).lower() for hint in _PERMANENT_HINTS)


def until_unreadable(items: Iterator[T], path: str) -> Iterator[T]:
    """The items of a format's iterator; a failure to READ the file (I/O error, truncated .gz,
    corrupt parquet) raises InputUnreadable with the rows read so far, so the caller retries the
    file or fails loudly. Only format errors inside readable bytes are malformed rows.

    next() by hand rather than `yield from` inside try: only errors raised while READING are caught,
    never ones thrown in when the consumer closes the stream early.
    """
    rows = 0
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except (OSError, EOFError, pa.ArrowException) as exc:
            raise InputUnreadable(path, rows, exc) from exc
        rows += item.num_rows if isinstance(item, pa.Table) else 1
        yield item
