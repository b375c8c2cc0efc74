"""Run the scripted model server as a process: `python -m taskpool.testing.scripted --port 0`.

Prints the base URL on one line, serves until SIGTERM or SIGINT, then exits 0. The library is
`taskpool.testing.scripted`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Sequence
from pathlib import Path

from taskpool.testing.scripted.server import DEFAULT_MODEL, ScriptedModelServer

__all__ = ["main"]


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m taskpool.testing.scripted",
        description="OpenAI-compatible server whose model finishes every task in one reply.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each reply")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name for /v1/models")
    parser.add_argument(
        "--port-file", type=Path, help="write the bound port here once the server listens"
    )
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ScriptedModelServer(
        host=args.host, port=args.port, latency=args.latency, model=args.model
    ) as server:
        if args.port_file is not None:
            # Written then renamed so a reader polling for the file never sees half of it.
            partial = args.port_file.with_name(args.port_file.name + ".partial")
            partial.write_text(f"{server.port}\n")
            partial.replace(args.port_file)
        print(server.base_url, flush=True)
        await stop.wait()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
