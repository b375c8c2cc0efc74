"""The directory reader: one task per text file, with id = the file's stem and input = its text."""

from __future__ import annotations

from pathlib import Path

from taskpool.client.inputs.draft import Draft, read_row
from taskpool.client.inputs.files import read_text
from taskpool.client.inputs.problems import Problems
from taskpool.client.inputs.row import TaskRow

TEXT_SUFFIXES = (".txt", ".md")


def read_directory(directory: Path, default_kind: str | None, problems: Problems) -> list[Draft]:
    """The `*.txt` / `*.md` files in `directory`, sorted by name. Other files, hidden files and
    subdirectories are ignored.
    """
    try:
        entries = list(directory.iterdir())
    except OSError as exc:
        problems.add(str(directory), None, f"cannot list: {exc.strerror or exc}")
        return []
    files = sorted(
        (
            entry
            for entry in entries
            if entry.suffix.lower() in TEXT_SUFFIXES
            and not entry.name.startswith(".")
            and entry.is_file()
        ),
        key=lambda entry: entry.name,
    )
    if not files:
        problems.add(
            str(directory),
            None,
            f"no tasks in {directory}: it has no {' or '.join(TEXT_SUFFIXES)} files",
        )
        return []
    drafts = []
    for file in files:
        text = read_text(file, problems)
        if text is not None:
            raw = {"id": file.stem, "input": text}
            drafts.append(read_row(TaskRow, raw, str(file), None, default_kind, problems))
    return drafts
