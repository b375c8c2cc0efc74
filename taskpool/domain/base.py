"""The two kinds of model every payload is: strict for what code writes, lenient for what
people type into the Temporal UI or CLI.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class LenientModel(BaseModel):
    """Payloads typed by people in the Temporal UI or CLI: unknown keys are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")
