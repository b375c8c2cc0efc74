"""Connecting to Temporal for client operations: the SDK's standard settings, with a deadline."""

from __future__ import annotations

import asyncio
import re

from temporalio.client import Client
from temporalio.service import RPCError

from taskpool.client.errors import ConnectionSettingsError, TemporalUnreachableError
from taskpool.infra.temporal_connection import address_of, connect

CONNECT_TIMEOUT_SECONDS = 20.0


async def connect_client() -> Client:
    """A client for the Temporal at TEMPORAL_ADDRESS (or the config profile's), or a
    ConnectionSettingsError or TemporalUnreachableError saying why not."""
    try:
        address = address_of()
    except Exception as err:  # the SDK's config loader raises several kinds for a bad profile
        raise ConnectionSettingsError(
            f"cannot read the Temporal connection settings: {err}"
        ) from None
    try:
        return await asyncio.wait_for(connect(), CONNECT_TIMEOUT_SECONDS)
    except TimeoutError:
        raise TemporalUnreachableError(
            address, f"no answer within {CONNECT_TIMEOUT_SECONDS:.0f} s"
        ) from None
    except (RuntimeError, RPCError) as err:
        raise TemporalUnreachableError(address, _connect_reason(err)) from None


def _connect_reason(err: Exception) -> str:
    # The core's message is a nested Rust debug dump; its innermost `message: "..."` says it best.
    text = str(err)
    found: list[str] = re.findall(r'message: "([^"]+)"', text)
    if found:
        return found[-1].lower()
    return text.removeprefix("Failed client connect: ").splitlines()[0][:200]
