"""Connecting to Temporal the standard way, and the one-time server setup the worker does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfigProfile
from temporalio.service import RPCError, RPCStatusCode

from taskpool.domain.names import SEARCH_ATTRIBUTES

DEFAULT_ADDRESS = "localhost:7233"


def status_text(status: WorkflowExecutionStatus | None) -> str:
    """How a workflow stands, in words: `running`, `completed`, `timed out`, ..."""
    return "closed" if status is None else status.name.lower().replace("_", " ")


def connect_config(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client.connect arguments from TEMPORAL_* variables and the config file profile."""
    profile = ClientConfigProfile.load(override_env_vars=env)
    config: dict[str, Any] = dict(profile.to_client_connect_config())
    config.setdefault("target_host", DEFAULT_ADDRESS)
    return config


async def connect(env: Mapping[str, str] | None = None, **overrides: Any) -> Client:
    config = connect_config(env)
    config.update(overrides)
    return await Client.connect(**config, data_converter=pydantic_data_converter)


def address_of(env: Mapping[str, str] | None = None) -> str:
    return str(connect_config(env)["target_host"])


async def ensure_search_attributes(
    client: Client, keys: tuple[SearchAttributeKey[Any], ...] = SEARCH_ATTRIBUTES
) -> list[str]:
    """Register the custom search attributes taskpool uses where missing; returns those added.

    Idempotent, and safe when several workers start at once.
    """
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    known = set(existing.custom_attributes) | set(existing.system_attributes)
    # The SDK's enum and the API's share their numbering.
    missing = {
        key.name: IndexedValueType.ValueType(key.indexed_value_type.value)
        for key in keys
        if key.name not in known
    }
    if not missing:
        return []
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(namespace=client.namespace, search_attributes=missing)
        )
    except RPCError as err:
        if err.status != RPCStatusCode.ALREADY_EXISTS:
            raise
    return sorted(missing)
