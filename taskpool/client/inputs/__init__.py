"""Task files: turn a user's task file or directory into TaskSpecs, or say precisely what is wrong
with it.

Everything is checked before a batch starts: a bad line found after a thousand tasks have run is a
lost afternoon. Every problem found is reported at once, each with its file, line and reason, so one
edit fixes them all.

The parts: one reader per format (`jsonl_file`, `csv_file`, `text_directory`) hands raw rows to
the row model (`row`), which coerces them into TaskSpecs; `checks` looks across the tasks (ids,
kinds, dependencies); readers and checks report into one collector (`problems.Problems`); `load`
ties them together.
"""

from taskpool.client.inputs.load import load_tasks
from taskpool.client.inputs.problems import MAX_REPORTED, InputError, InputProblem

__all__ = ["MAX_REPORTED", "InputError", "InputProblem", "load_tasks"]
