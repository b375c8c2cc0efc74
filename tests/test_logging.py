"""Logging goes through one pipeline: structlog and standard-library records alike, as JSON off a
terminal, with the ids bound where the work happens."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import structlog

from taskpool.infra.log_config import configure_logging


def test_structlog_and_stdlib_records_share_the_json_pipeline(tmp_path: Path) -> None:
    log_file = tmp_path / "out.log"
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    configure_logging("info", "json", log_file=log_file)
    try:
        structlog.contextvars.bind_contextvars(task_key="b-1/doc-1", attempt=2)
        structlog.get_logger("taskpool.test").info("llm turn done", tokens=12)
        structlog.contextvars.clear_contextvars()
        logging.getLogger("temporalio.worker").warning("an SDK record %s", "here")
        logging.getLogger("quiet").debug("below the level")
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        structlog.reset_defaults()
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert len(lines) == 2
    ours, sdk = lines
    assert ours["event"] == "llm turn done"
    assert ours["task_key"] == "b-1/doc-1"
    assert ours["attempt"] == 2
    assert ours["tokens"] == 12
    assert ours["level"] == "info"
    assert "timestamp" in ours
    assert sdk["event"] == "an SDK record here"
    assert sdk["logger"] == "temporalio.worker"
    assert sdk["level"] == "warning"
    assert "task_key" not in sdk
