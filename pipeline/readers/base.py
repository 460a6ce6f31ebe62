"""Reader base class: streaming, batching, counting and malformed-row handling live here once.

A format reader only says how to turn its file into rows. It implements ONE of:

* `iter_rows(path)`   -> yields `Row` tuples (url, caption, width, height, malformed), one per input
                         row, in input order. Used by the line-based formats (TSV, CSV, JSONL).
* `iter_tables(path)` -> yields `pa.Table`s already in SOURCE_ROW schema. Used by parquet formats,
                         which stay columnar (no per-row Python) for speed.

`read(path)` is the one public call: it streams `pa.Table`s of at most `ReaderConfig.batch_size`
rows with exactly `common.schemas.SOURCE_ROW`, so memory is bounded by the batch, never by the file.
Bad input never raises: it becomes a row whose `malformed` column says why, and it is counted.

The per-record loops that decide "malformed or not" also live here, once: `header_rows` (csv with
a header row: WIT, CSV, TSV), `split_rows` (headerless tab-split lines: CC3M, YFCC100M) and
`line_rows` (one UTF-8 line per row: JSONL). A format passes its column rule, its detail text and
a `to_row` callback that only knows its own columns.
"""

from __future__ import annotations

import csv
import io
from typing import Callable, Iterable, Iterator, NamedTuple, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common import storage
from common.schemas import SOURCE_ROW
from pipeline.config import ReaderConfig

T = TypeVar("T")
_READ_BUFFER = 1 << 20  # 1 MiB: large enough that remote streams are read in few requests


class Row(NamedTuple):
    url: str | None
    caption: str | None
    width: int | None = None
    height: int | None = None
    malformed: str | None = None


def bad(detail: str, url: str | None = None, caption: str | None = None) -> Row:
    """A row that could not be used; the detail ends up in the `malformed` rejection."""
    return Row(url, caption, None, None, detail)


def has_surrogates(text: str) -> bool:
    """True when text decoded with errors='surrogateescape' contained bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def csv_records(reader) -> Iterator[list[str] | str]:
    """Records of a csv.reader; a record the csv module rejects comes back as an error string."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield f"csv: {exc}"


def to_int(value: object) -> int | None:
    """Best-effort positive size from metadata ('640', 640.0, '', None): unknown becomes None."""
    if value is None or value == "":
        return None
    try:
        number = int(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number > 0 else None


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


def _until_unreadable(items: Iterator[T], path: str) -> Iterator[T]:
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


class Split(NamedTuple):
    """Part of one input file, so that caption work follows the cluster, not the file count.

    kind "rows":  parquet row groups [start, stop); first_row is the file's row number of the first.
    kind "bytes": the lines that START in bytes [start, stop) of an uncompressed line file (the
                  line that straddles `start` belongs to the previous split); first_row = start, so
                  row numbers stay unique and in input order (a line has at least one byte).
    """

    kind: str
    start: int
    stop: int
    first_row: int


class Reader:
    """Base of every format reader. Subclasses set `format` and implement iter_rows or iter_tables."""

    format = ""

    def __init__(self, cfg: ReaderConfig | None = None):
        self.cfg = cfg or ReaderConfig()
        self.rows_read = 0
        self.malformed = 0
        self.split: Split | None = None

    # -- the public call --------------------------------------------------------------------------
    def read(self, path: str, split: Split | None = None) -> Iterator[pa.Table]:
        """Stream SOURCE_ROW tables of at most batch_size rows, one row per input row, in order.

        A file that cannot be read to its end (truncated .gz, corrupt parquet, I/O error) raises
        InputUnreadable after the rows read so far: a file-level failure, never one malformed row.
        """
        self.split = split
        batch_size = max(1, int(self.cfg.batch_size))
        if type(self).iter_tables is not Reader.iter_tables:
            for table in _until_unreadable(self.iter_tables(path), path):
                for start in range(0, table.num_rows, batch_size):
                    yield self._count(table.slice(start, batch_size))
            return
        buffer: list[Row] = []
        for row in _until_unreadable(self.iter_rows(path), path):
            buffer.append(row)
            if len(buffer) >= batch_size:
                yield self._count(self._to_table(buffer))
                buffer = []
        if buffer:
            yield self._count(self._to_table(buffer))

    # -- hooks for subclasses ---------------------------------------------------------------------
    def iter_rows(self, path: str) -> Iterator[Row]:
        raise NotImplementedError(f"{type(self).__name__} must implement iter_rows or iter_tables")

    def iter_tables(self, path: str) -> Iterator[pa.Table]:
        raise NotImplementedError

    # -- helpers shared by the formats ------------------------------------------------------------
    def open_lines(self, path: str) -> Iterator[bytes]:
        """Raw lines (bytes, newline included) of a possibly compressed, possibly remote file, or of
        this reader's byte-range split of an uncompressed one.

        Bytes, not text: an undecodable line must become one malformed row, not end the file.
        """
        split = self.split
        if split is None or split.kind != "bytes":
            with storage.open_input(path) as stream:
                yield from io.BufferedReader(stream, buffer_size=_READ_BUFFER)
            return
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as raw:
            raw.seek(max(0, split.start - 1))
            lines = io.BufferedReader(raw, buffer_size=_READ_BUFFER)
            pos = max(0, split.start - 1)
            if split.start > 0:  # finish the line that straddles `start`: the previous split owns it
                pos += len(lines.readline())
            while pos < split.stop:
                line = lines.readline()
                if not line:
                    return
                pos += len(line)
                yield line

    def parquet_batches(self, path: str, columns: list[str]) -> Iterator[pa.RecordBatch]:
        """Record batches of a parquet file, or of this reader's row-group split of it."""
        split = self.split
        groups = range(split.start, split.stop) if split is not None and split.kind == "rows" else None
        fs, inner = storage.resolve(path)
        with fs.open_input_file(inner) as fh:
            yield from pq.ParquetFile(fh).iter_batches(
                batch_size=self.cfg.batch_size, columns=columns, row_groups=groups
            )

    @staticmethod
    def open_text(path: str) -> io.TextIOWrapper:
        """Text stream for the csv module; undecodable bytes survive as surrogates (see has_surrogates)."""
        raw = io.BufferedReader(storage.open_input(path), buffer_size=_READ_BUFFER)
        return io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")

    @staticmethod
    def decode(line: bytes) -> str | None:
        """A line without its line ending, or None when it is not UTF-8."""
        try:
            return line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            return None

    # -- the shared per-record loops: a format passes only what is specific to it ------------------
    def header_rows(
        self,
        path: str,
        delimiter: str,
        required: Iterable[str],
        lacks: str,
        to_row: Callable[[dict[str, int], list[str]], Row],
    ) -> Iterator[Row]:
        """Rows of a delimited file with a header row, parsed by the csv module (quoted fields).

        The header maps column name -> index. A record becomes a malformed row when the csv module
        rejects it, when the header lacks a `required` column (detail: `lacks` formatted with
        missing=[...]), when its column count differs from the header's, or when it holds bytes
        that are not UTF-8; every other record goes to `to_row(index, fields)`.
        """
        csv.field_size_limit(1 << 26)  # long captions/context are fine; a record is still bounded
        with self.open_text(path) as text:
            records = csv_records(csv.reader(text, delimiter=delimiter))
            header = next(records, None)
            if header is None or isinstance(header, str):
                return
            index = {name.strip(): i for i, name in enumerate(header)}
            missing = [c for c in required if c not in index]
            for fields in records:
                if isinstance(fields, str):
                    yield bad(fields)
                elif missing:
                    yield bad(lacks.format(missing=missing))
                elif len(fields) != len(header):
                    yield bad(f"expected {len(header)} columns, got {len(fields)}")
                elif any(has_surrogates(f) for f in fields):
                    yield bad("undecodable bytes (not UTF-8)")
                else:
                    yield to_row(index, fields)

    def line_rows(self, path: str, to_row: Callable[[str], Row]) -> Iterator[Row]:
        """One row per line: a line that is not UTF-8 is malformed, any other goes to `to_row(line)`."""
        for raw in self.open_lines(path):
            line = self.decode(raw)
            yield bad("undecodable bytes (not UTF-8)") if line is None else to_row(line)

    def split_rows(
        self, path: str, columns: int, wrong_count: str, to_row: Callable[[list[str]], Row]
    ) -> Iterator[Row]:
        """One row per tab-separated line without header or quoting (split, not csv).

        A line with other than `columns` fields is malformed (detail: `wrong_count` formatted
        with got=N); the fields of any other line go to `to_row(fields)`.
        """

        def split(line: str) -> Row:
            fields = line.split("\t")
            return bad(wrong_count.format(got=len(fields))) if len(fields) != columns else to_row(fields)

        yield from self.line_rows(path, split)

    def _to_table(self, rows: list[Row]) -> pa.Table:
        columns = list(zip(*rows, strict=True))
        return pa.Table.from_arrays(
            [pa.array(col, type=field.type) for col, field in zip(columns, SOURCE_ROW, strict=True)], schema=SOURCE_ROW
        )

    def _count(self, table: pa.Table) -> pa.Table:
        self.rows_read += table.num_rows
        self.malformed += table.num_rows - table.column("malformed").null_count
        return table


def _utf8(value: bytes | None) -> bool:
    if value is None:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def columnar_source_rows(
    batch: pa.RecordBatch | pa.Table, url: str, caption: str, width: str | None, height: str | None
) -> pa.Table:
    """SOURCE_ROW from named columns of an Arrow batch, without a per-row Python loop.

    A row is malformed when its URL or caption is missing; sizes that are not positive numbers
    become null (unknown) rather than malformed, since they only feed the aspect-ratio filter.
    """
    n = batch.num_rows
    names = batch.schema.names

    def text(name: str) -> pa.Array:
        if name not in names:
            return pa.nulls(n, pa.string())
        col = batch.column(names.index(name))
        if pa.types.is_large_string(col.type) or pa.types.is_string(col.type):
            return pc.cast(col, pa.string())
        if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            try:
                return pc.cast(col, pa.string())
            except pa.ArrowInvalid:  # some values are not UTF-8: null them, the row becomes malformed
                values = [v.decode("utf-8", "strict") if _utf8(v) else None for v in col.to_pylist()]
                return pa.array(values, pa.string())
        return pc.cast(col, pa.string())

    def size(name: str | None) -> pa.Array:
        if not name or name not in names:
            return pa.nulls(n, pa.int64())
        col = batch.column(names.index(name))
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.utf8_trim_whitespace(col)
            col = pc.cast(pc.if_else(pc.match_substring_regex(col, r"^[0-9]+(\.[0-9]*)?$"), col, None), pa.float64())
        if pa.types.is_floating(col.type):
            col = pc.if_else(pc.is_finite(col), col, None)
            col = pc.floor(col)
        col = pc.cast(col, pa.int64(), safe=False)
        return pc.if_else(pc.greater(col, 0), col, None)

    urls = text(url)
    captions = text(caption)
    url_missing = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(urls)), 0), True)
    caption_missing = pc.is_null(captions)
    malformed = pc.if_else(
        url_missing,
        pa.scalar(f"missing {url}", pa.string()),
        pc.if_else(caption_missing, pa.scalar(f"missing {caption}", pa.string()), pa.scalar(None, pa.string())),
    )
    return pa.Table.from_arrays([urls, captions, size(width), size(height), malformed], schema=SOURCE_ROW)
