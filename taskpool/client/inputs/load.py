"""load_tasks: pick the reader for a source, check the tasks across it, and raise every problem."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from taskpool.client.inputs.checks import check_batch
from taskpool.client.inputs.csv_file import CSV_SUFFIXES, read_csv
from taskpool.client.inputs.draft import Reading
from taskpool.client.inputs.files import read_text
from taskpool.client.inputs.jsonl_file import JSONL_SUFFIXES, read_jsonl
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.text_directory import TEXT_SUFFIXES, read_directory
from taskpool.domain.tasks import TaskSpec


def load_tasks(
    path: str | Path,
    *,
    default_kind: str | None = None,
    known_kinds: Collection[str] | None = None,
    existing_ids: Collection[str] = (),
    check_dependencies: bool = True,
) -> list[TaskSpec]:
    """Read the tasks in `path`, in file order, or raise InputError listing every problem.

    `path` is one of:

    - a JSON Lines file (`.jsonl`, `.ndjson`, or `.json` with one object per line): one task per
      line, `{"id", "input", "label"?, "kind"?, "priority"?, "depends_on"?, "scheduled_for"?,
      "metadata"?}`; blank lines are skipped;
    - a CSV file (`.csv`) whose header names the same fields. `input` is text, or a JSON object
      when the cell holds one; `depends_on` is ids separated by commas or semicolons, or a JSON
      list; `metadata` is a JSON object; an empty cell means "not given";
    - a directory: one task per `*.txt` / `*.md` file, sorted by file name, with id = the file's
      stem and input = its text. Other files, hidden files and subdirectories are ignored.

    Files are UTF-8 (a byte-order mark is allowed). An optional field that is null or an empty
    string counts as not given. `priority` is case-insensitive. `scheduled_for` is an ISO 8601
    date-time or date; one without a timezone is taken as UTC.

    `default_kind` is the kind of tasks that do not set one. `known_kinds`, when given, is the set
    of kinds a task may name. `existing_ids` are the ids already in the batch when adding tasks to
    it: new ids must differ from them, and new tasks may depend on them. Without
    `check_dependencies` (a file that gives tasks of a batch new inputs), `depends_on` may name
    tasks the file does not hold.
    """
    source = Path(path)
    problems = Problems()
    reading = _read_source(source, default_kind, problems)
    check_batch(
        str(source),
        reading,
        problems,
        default_kind=default_kind,
        known_kinds=known_kinds,
        existing_ids=existing_ids,
        check_dependencies=check_dependencies,
    )
    problems.raise_if_any()
    return [draft.spec for draft in reading.drafts if draft.spec is not None]


def _read_source(source: Path, default_kind: str | None, problems: Problems) -> Reading:
    where = str(source)
    if source.is_dir():
        return Reading(read_directory(source, default_kind, problems))
    if not source.exists():
        problems.add(where, None, "no such file or directory")
        return Reading([])
    if not source.is_file():
        problems.add(where, None, "not a regular file or directory")
        return Reading([])
    suffix = source.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        problems.add(
            where,
            None,
            f"unsupported file type {suffix or '(no extension)'!r}: give a JSON Lines file "
            f"({', '.join(JSONL_SUFFIXES)}), a {', '.join(CSV_SUFFIXES)} file, "
            f"or a directory of {', '.join(TEXT_SUFFIXES)} files",
        )
        return Reading([])
    text = read_text(source, problems)
    if text is None:
        return Reading([])
    if suffix in CSV_SUFFIXES:
        return read_csv(where, text, default_kind, problems)
    return Reading(read_jsonl(where, text, default_kind, problems))
