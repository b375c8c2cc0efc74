"""The worker's configuration, read from its environment.

Secrets and provider settings live here and never enter workflow inputs or history. Temporal's own
connection settings (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY, TLS, profiles) are read
by the SDK's env config, see taskpool.infra.temporal_connection.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

DEFAULT_TASK_QUEUE = "taskpool"
DEFAULT_STORE = "data/taskpool.db"

# Environment variable -> settings field.
ENVIRONMENT = {
    "OPENAI_API_KEY": "openai_api_key",
    "OPENAI_BASE_URL": "openai_base_url",
    "TASKPOOL_MODEL": "model",
    "TASKPOOL_TOOL_MODE": "tool_mode",
    "TASKPOOL_TEMPERATURE": "temperature",
    "TASKPOOL_JSON_MAX_STRING": "json_max_string_length",
    "TASKPOOL_TASK_QUEUE": "task_queue",
    "TASKPOOL_STORE": "store_url",
    "TASKPOOL_MAX_CONCURRENT_ACTIVITIES": "max_concurrent_activities",
    "TASKPOOL_MAX_CACHED_WORKFLOWS": "max_cached_workflows",
    "TASKPOOL_WORKFLOW_SANDBOX": "workflow_sandbox",
    "TASKPOOL_RPM": "requests_per_minute",
    "TASKPOOL_TPM": "tokens_per_minute",
    "TASKPOOL_TOKEN_BUDGET_DB": "token_budget_db",
    "TASKPOOL_WEBHOOK_URL": "webhook_url",
    "TASKPOOL_WEBHOOK_SECRET": "webhook_secret",
    "TASKPOOL_LOG_LEVEL": "log_level",
    "TASKPOOL_LOG_FORMAT": "log_format",
}


class SettingsError(ValueError):
    pass


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    model: str = "gpt-4o-mini"
    # "json" for models without native tool calling: tools are emulated with a JSON-schema
    # response format.
    tool_mode: Literal["native", "json"] = "native"
    # Unset: the provider's default.
    temperature: float | None = Field(default=None, ge=0, le=2)
    # With tool_mode json: the longest string the grammar lets the model write, which stops a
    # small model that repeats itself before the token limit cuts its JSON off.
    json_max_string_length: int | None = Field(default=None, ge=1)
    task_queue: str = DEFAULT_TASK_QUEUE
    store_url: str = DEFAULT_STORE
    max_concurrent_activities: int = Field(default=200, ge=1)
    max_cached_workflows: int = Field(default=1000, ge=0)
    # The SDK's workflow sandbox catches non-deterministic calls at run time, at a price in worker
    # CPU per workflow; off trades that net (CI still replays recorded histories) for throughput.
    workflow_sandbox: bool = True
    # Model calls per minute on this task queue, enforced by the Temporal server across all its
    # workers (one queue per model: see docs/rate-limits.md).
    requests_per_minute: float | None = Field(default=None, gt=0)
    # Model tokens per minute, a budget shared through a SQLite file (taskpool.infra.ratelimit).
    tokens_per_minute: int | None = Field(default=None, ge=1)
    # That file; default: beside a SQLite task store. ":memory:" keeps it in this process.
    token_budget_db: str | None = None
    # Where batches announce their news, and the secret that signs each delivery. The URL is
    # kept as a secret too: many endpoints carry their credential in it.
    webhook_url: SecretStr | None = None
    webhook_secret: SecretStr | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("webhook_url")
    @classmethod
    def _an_http_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"https?://\S+", value.get_secret_value()):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        given = {field: env[var] for var, field in ENVIRONMENT.items() if env.get(var)}
        if "log_level" in given:
            given["log_level"] = given["log_level"].lower()
        try:
            return cls.model_validate(given)
        except ValidationError as err:
            fields = {field: var for var, field in ENVIRONMENT.items()}
            problems = [
                f"{fields.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}" for e in err.errors()
            ]
            raise SettingsError("bad configuration: " + "; ".join(problems)) from None

    def to_env(self) -> dict[str, str]:
        """The environment that gives a worker process these settings (from_env's inverse)."""
        env: dict[str, str] = {}
        for var, field in ENVIRONMENT.items():
            value = getattr(self, field)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            env[var] = str(value).lower() if isinstance(value, bool) else str(value)
        return env
