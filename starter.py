"""taskpool's command line: start a batch from a task file, follow it, steer it, export results.

`python starter.py --help` lists the commands. Temporal connection settings come from the SDK's
standard env config (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, ...); the task queue and task store from
TASKPOOL_TASK_QUEUE and TASKPOOL_STORE.
"""

from __future__ import annotations

import os
import sys

from taskpool.cli import main

if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # A process that used the Temporal SDK can abort while the interpreter finalizes
    # (sdk-python issue 300), which would replace this command's exit status with a crash.
    os._exit(code)
