"""starter.py's command line: start, follow, steer and export taskpool batches."""

from taskpool.cli.app import main, run

__all__ = ["main", "run"]
