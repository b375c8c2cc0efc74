"""A file's text, or the problem that keeps it from being read."""

from __future__ import annotations

from pathlib import Path

from taskpool.client.inputs.problems import Problems


def read_text(file: Path, problems: Problems) -> str | None:
    """The file's UTF-8 text (a byte-order mark is allowed), or None with the problem reported."""
    try:
        raw = file.read_bytes()
    except OSError as exc:
        problems.add(str(file), None, f"cannot read: {exc.strerror or exc}")
        return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        byte = raw[exc.start : exc.start + 1].hex()
        problems.add(str(file), line, f"not UTF-8 text (byte 0x{byte}); save it as UTF-8")
        return None
