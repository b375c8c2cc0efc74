"""The CSV reader: a header naming task fields, then one task per record."""

from __future__ import annotations

import csv
import io

from taskpool.client.inputs.draft import Draft, Reading, read_row
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.row import CellRow
from taskpool.client.inputs.wording import FIELD_LIST, FIELDS, suggest

CSV_SUFFIXES = (".csv",)

# Task inputs are whole documents; csv's default cell limit (128 KiB) would reject ordinary ones.
_CSV_FIELD_LIMIT = 256 * 1024 * 1024


def read_csv(where: str, text: str, default_kind: str | None, problems: Problems) -> Reading:
    """The records of a CSV file; incomplete when a record could not be parsed, or when a bad
    header leaves the rows unreadable.
    """
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # newline="" leaves line endings inside quoted cells to the csv module, as its docs require.
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    columns: list[str] | None = None
    drafts: list[Draft] = []
    rows = 0
    start = 1  # A quoted cell may span lines: report the line where its record starts.
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                if columns is None:
                    columns = _read_header(where, start, row, problems)
                    if columns is None:
                        return Reading([], complete=False)
                else:
                    rows += 1
                    drafts.append(_read_record(where, start, columns, row, default_kind, problems))
            start = reader.line_num + 1
    except csv.Error as exc:
        reason = (
            "a quoted cell starting here never ends (missing closing quote)"
            if "unexpected end of data" in str(exc)
            else f"bad CSV: {exc}; a quote inside a quoted cell is written as two quotes"
        )
        problems.add(where, start, reason)
        return Reading(drafts, complete=False)
    if columns is None:
        problems.add(where, None, f"no tasks in {where}: the file is empty")
    elif rows == 0:
        problems.add(where, None, f"no tasks in {where}: it has only a header")
    return Reading(drafts)


def _read_header(where: str, line: int, row: list[str], problems: Problems) -> list[str] | None:
    """The header's column names, or None when the rows cannot be read against it."""
    columns = [cell.strip().lower() for cell in row]
    usable = True
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            problems.add(where, line, f"column {name!r} appears twice")
            usable = False
        seen.add(name)
        if name and name not in FIELDS:
            # Reported once here; the rows just ignore the column.
            problems.add(
                where,
                line,
                f"unknown column {name!r}{suggest(name, FIELDS)}; columns are {FIELD_LIST}",
            )
    for required in ("id", "input"):
        if required not in seen:
            hint = ""
            if len(row) == 1 and any(sep in row[0] for sep in ";\t"):
                hint = (
                    "; the header seems to use another separator, but cells are separated by commas"
                )
            problems.add(where, line, f"header has no {required!r} column{hint}")
            usable = False
    return columns if usable else None


def _read_record(
    where: str,
    line: int,
    columns: list[str],
    row: list[str],
    default_kind: str | None,
    problems: Problems,
) -> Draft:
    if len(row) > len(columns):
        problems.add(
            where,
            line,
            f"{len(row)} cells but the header has {len(columns)} columns; "
            "put text that contains commas in double quotes",
        )
        # The id usually comes before the stray comma; knowing it spares false "no task" reports.
        task_id = row[columns.index("id")].strip()
        return Draft(where, line, task_id or None)
    # A short row leaves its last cells out: the same as empty cells.
    cells = dict(zip(columns, row, strict=False))
    return read_row(CellRow, cells, where, line, default_kind, problems)
