"""JSON as task files may write it: standard JSON, which has no NaN or Infinity."""

from __future__ import annotations

import json


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


# NaN and Infinity are not JSON, and no later JSON encoder would write them back.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(text: str) -> object:
    """The value `text` holds; ValueError (a JSONDecodeError when it says where) if none."""
    return _DECODER.decode(text)


def parse_json_or_none(text: str) -> object:
    try:
        return _DECODER.decode(text)
    except ValueError:
        return None
