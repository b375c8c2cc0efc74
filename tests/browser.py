"""Headless Chromium over the DevTools protocol, for tests that look at real web pages.

The protocol is spoken over aiohttp's websocket client (already a dependency), so the tests need
no Selenium and no browser download: only the `chromium` Debian package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from taskpool.devtools.processes import Startable

# The machine may have no internet: every Chromium feature that phones home must stay off, or
# page loads wait on it.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # Chromium refuses to run as root with its sandbox.
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    # The page is a tab opened over DevTools; throttled like a background tab, the UI takes
    # seconds longer to render.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
_EXECUTABLES = ("chromium", "chromium-browser", "google-chrome")
_WRAPPER_DIR = Path("/usr/lib/chromium")


class BrowserError(RuntimeError):
    """Chromium did not start, or a DevTools command failed."""


def find_chromium() -> str | None:
    """The Chromium executable on PATH, or None."""
    for name in _EXECUTABLES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser(Startable):
    """One headless Chromium process with one page, as an async context manager."""

    def __init__(
        self,
        executable: str,
        profile_dir: Path,
        *,
        window: tuple[int, int] = (1400, 1000),
        start_timeout: float = 20.0,
        command_timeout: float = 20.0,
    ) -> None:
        self.executable = executable
        self.profile_dir = profile_dir
        self.window = window
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._session_id: str | None = None
        self._devtools_url = ""

    @property
    def log_path(self) -> Path:
        return self.profile_dir / "chromium.log"

    async def start(self) -> None:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        try:
            await self._launch()
            await self._connect()
            await self._open_page()
        except BaseException:
            await self.stop()
            raise

    # --- page actions ---------------------------------------------------------------------------

    async def goto(self, url: str) -> None:
        answer = await self.send("Page.navigate", url=url)
        if answer.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {answer['errorText']}")

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises are awaited)."""
        answer = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            message = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed in the page: {message}")
        return answer["result"].get("value")

    async def url(self) -> str:
        return str(await self.evaluate("location.href"))

    async def text(self, scope: str = "body") -> str:
        """The visible text of the elements matching `scope`, as a reader would copy it,
        including what same-origin frames inside them show (the Temporal UI renders Markdown in
        one)."""
        script = f"""(() => {{
            const parts = [];
            const visit = (el) => {{
                if (el.tagName === "IFRAME") {{
                    const body = el.contentDocument && el.contentDocument.body;
                    if (body) visit(body);
                    return;
                }}
                parts.push(el.innerText);
                for (const frame of el.querySelectorAll("iframe")) visit(frame);
            }};
            document.querySelectorAll({json.dumps(scope)}).forEach(visit);
            return parts.join("\\n");
        }})()"""
        return str(await self.evaluate(script))

    async def wait_for_text(
        self,
        *needles: str,
        scope: str = "body",
        within: float = 20.0,
    ) -> str:
        """Poll until the text of `scope` contains every needle; returns that text."""
        deadline = time.monotonic() + within
        while True:
            text = await self.text(scope)
            missing = [n for n in needles if n not in text]
            if not missing:
                return text
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{await self.url()} did not show {missing} in {scope!r} within "
                    f"{within:.0f} s; it shows:\n{text[:3000]}"
                )
            await asyncio.sleep(0.2)

    async def click(
        self,
        selector: str,
        *,
        text: str | None = None,
        within: float = 10.0,
    ) -> None:
        """Click, with real mouse events, the first element matching `selector` (and whose trimmed
        visible text equals `text`, if given) once it is visible and nothing covers it."""
        finder = f"""(() => {{
            const want = {json.dumps(text)};
            for (const el of document.querySelectorAll({json.dumps(selector)})) {{
                const shown = {{opacityProperty: true, visibilityProperty: true}};
                if (!el.checkVisibility(shown)) continue;
                if (want !== null && el.innerText.trim() !== want) continue;
                el.scrollIntoView({{block: "center"}});
                const box = el.getBoundingClientRect();
                const x = box.left + box.width / 2, y = box.top + box.height / 2;
                if (el.contains(document.elementFromPoint(x, y))) return [x, y];
            }}
            return null;
        }})()"""
        deadline = time.monotonic() + within
        while (point := await self.evaluate(finder)) is None:
            if time.monotonic() >= deadline:
                shown = f" with text {text!r}" if text is not None else ""
                raise AssertionError(
                    f"no visible, uncovered {selector!r}{shown} on {await self.url()} "
                    f"within {within:.0f} s"
                )
            await asyncio.sleep(0.1)
        x, y = point
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            await self.send(
                "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1
            )

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not only the window) at `path`."""
        answer = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        await asyncio.to_thread(_write, path, base64.b64decode(answer["data"]))
        return path

    # --- protocol -------------------------------------------------------------------------------

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One DevTools command to the page; returns its result or raises its error."""
        return await self._command(method, params, session_id=self._session_id)

    async def _command(
        self, method: str, params: dict[str, Any], *, session_id: str | None
    ) -> dict[str, Any]:
        if self._ws is None or self._ws.closed:
            raise BrowserError(f"{method}: the DevTools connection is closed{self._log_tail()}")
        message_id = next(self._ids)
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[message_id] = answer
        try:
            await self._ws.send_str(json.dumps(message))
            reply = await asyncio.wait_for(answer, self.command_timeout)
        except TimeoutError:
            raise BrowserError(f"{method}: no answer within {self.command_timeout:.0f} s") from None
        finally:
            self._pending.pop(message_id, None)
        if "error" in reply:
            raise BrowserError(f"{method} failed: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(message.data)
            # Events (no id) are not needed: callers poll the page's state instead.
            waiter = self._pending.get(data.get("id", -1))
            if waiter is not None and not waiter.done():
                waiter.set_result(data)
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(BrowserError(f"Chromium went away{self._log_tail()}"))

    # --- process --------------------------------------------------------------------------------

    async def _launch(self) -> None:
        port_file = self.profile_dir / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        width, height = self.window
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                self.executable,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self.profile_dir}",
                f"--window-size={width},{height}",
                "about:blank",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        # Chromium writes "<port>\n<browser websocket path>" once DevTools listens.
        while not _complete(port_file):
            if self._proc.returncode is not None:
                raise BrowserError(
                    f"Chromium exited with status {self._proc.returncode}{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise BrowserError(
                    f"Chromium did not open DevTools within {self.start_timeout:.0f} s"
                    f"{self._log_tail()}"
                )
            await asyncio.sleep(0.05)
        port, path = port_file.read_text().split("\n")[:2]
        self._devtools_url = f"ws://127.0.0.1:{port.strip()}{path.strip()}"

    async def _connect(self) -> None:
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self._devtools_url, max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _open_page(self) -> None:
        created = await self._command(
            "Target.createTarget", {"url": "about:blank"}, session_id=None
        )
        attached = await self._command(
            "Target.attachToTarget",
            {"targetId": created["targetId"], "flatten": True},
            session_id=None,
        )
        self._session_id = attached["sessionId"]
        await self.send("Page.enable")
        await self.send("Page.bringToFront")
        width, height = self.window
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def stop(self) -> None:
        """Close the connection and stop Chromium with its whole process group; idempotent."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._command("Browser.close", {}, session_id=None)
            await self._ws.close()
            self._ws = None
        if self._reader is not None:
            await self._reader
            self._reader = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        if self._proc is not None:
            await self._stop_process(self._proc)
            self._proc = None

    @staticmethod
    async def _stop_process(proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5)
        # Renderer and zygote processes live in the same group; none may outlive the test.
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            if sig is signal.SIGTERM:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 5)
        await proc.wait()

    def _log_tail(self) -> str:
        if not self.log_path.exists():
            return ""
        tail = self.log_path.read_bytes()[-3000:].decode(errors="replace")
        return f"\n--- Chromium output ({self.log_path}) ---\n{tail}"


def _complete(port_file: Path) -> bool:
    # The file may be seen half-written; both lines must be there.
    return port_file.exists() and len(port_file.read_text().split("\n")) >= 2


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
