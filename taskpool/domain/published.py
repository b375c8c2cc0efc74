"""What a batch publishes about itself where no worker is needed to read it: a compact status in
its memo, beside its search attributes. `status` and `watch` show it when no worker answers the
batch's query (right after a worker died, or before any worker ran).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from taskpool.domain.base import LenientModel
from taskpool.domain.batch import BatchState, BatchStatus
from taskpool.domain.tasks import TokenUsage

# The memo key the batch publishes its status under (visible in `temporal workflow describe`).
STATUS_MEMO = "taskpool_status"


class PublishedStatus(LenientModel):
    """The batch's status as it last published it, `at` the workflow time it did. Lenient and
    defaulted: a reader may meet a memo that an older or newer worker wrote."""

    state: BatchState
    paused: bool = False
    pause_reason: str | None = None
    cancel_reason: str | None = None
    concurrency: int | None = None
    in_flight: int = 0
    total: int = 0
    counts: dict[str, int] = Field(default_factory=dict)
    usage: TokenUsage = Field(default_factory=TokenUsage)
    llm_calls: int = 0
    started_at: datetime | None = None
    run_number: int = 1
    at: datetime

    @classmethod
    def of(cls, status: BatchStatus, at: datetime) -> PublishedStatus:
        return cls(
            state=status.state,
            paused=status.paused,
            pause_reason=status.pause_reason,
            cancel_reason=status.cancel_reason,
            concurrency=status.concurrency,
            in_flight=status.in_flight,
            total=status.total,
            counts=status.counts,
            usage=status.usage,
            llm_calls=status.llm_calls,
            started_at=status.started_at,
            run_number=status.run_number,
            at=at,
        )

    def memo(self) -> dict[str, object]:
        """The memo as the workflow upserts it: plain JSON, nulls left out (the defaults stand
        for them), so it reads the same whatever data converter wrote it."""
        return {STATUS_MEMO: self.model_dump(mode="json", exclude_none=True)}
