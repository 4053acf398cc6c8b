"""Headless Chromium driven over the DevTools protocol (CDP) with aiohttp's websocket client.

No browser download, no driver binary: Debian's `chromium` package, started with a fresh
profile, a DevTools port chosen by the browser itself, and loopback traffic only.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

PAGE_DIR = Path(__file__).parent
EXECUTABLES = ("chromium", "chromium-browser")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    # A page that is never shown must not have its timers or audio throttled.
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
    "--disable-dev-shm-usage",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)
START_TIMEOUT_SECONDS = 60.0


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str:
    for name in EXECUTABLES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError(
        "headless Chromium is needed for the browser tests and none was found on PATH: "
        "install Debian's package (apt-get install -y chromium)"
    )


def chromium_version(executable: str) -> str:
    done = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip()


class Page:
    """One tab's CDP session: evaluate JavaScript and get its (JSON) value back."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse[bool]) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self.console: list[str] = []

    async def call(self, method: str, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        try:
            return await asyncio.wait_for(self._reply(method, call_id), timeout)
        except asyncio.TimeoutError:
            raise BrowserError(f"{method}: no answer in {timeout} s; {self.console}") from None

    async def _reply(self, method: str, call_id: int) -> dict[str, Any]:
        async for message in self._ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection closed: {message!r}")
            data = json.loads(message.data)
            if data.get("id") == call_id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result
            self._note_event(data)
        raise BrowserError("DevTools connection closed")

    def _note_event(self, data: dict[str, Any]) -> None:
        method = data.get("method")
        params = data.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            self.console.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            self.console.append(f"exception: {params['exceptionDetails'].get('text')}")

    async def evaluate(self, expression: str, timeout: float = 30.0) -> Any:
        result = await self.call(
            "Runtime.evaluate",
            timeout=timeout,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            description = details.get("exception", {}).get("description") or details["text"]
            raise BrowserError(f"page script failed: {description}; console: {self.console}")
        return result["result"].get("value")

    async def goto(self, url: str, ready: str, timeout: float = 30.0) -> None:
        """Navigate, then wait until the JavaScript expression `ready` is true."""
        navigated = await self.call("Page.navigate", url=url)
        if "errorText" in navigated:
            raise BrowserError(f"{url}: {navigated['errorText']}")
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                if await self.evaluate(f"Boolean({ready})"):
                    return
            except BrowserError:
                pass  # the old document, or one between documents: ask again
            if asyncio.get_running_loop().time() > deadline:
                raise BrowserError(f"{url} was not ready in {timeout} s; {self.console}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def launch(profile_dir: Path) -> AsyncIterator[Page]:
    """Start headless Chromium with a fresh profile in `profile_dir` and yield its one tab."""
    executable = find_chromium()
    log_path = _prepare(profile_dir)
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            executable,
            *FLAGS,
            f"--user-data-dir={profile_dir}",
            "about:blank",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        port = await _devtools_port(profile_dir, process, log_path)
        async with aiohttp.ClientSession() as http:
            page_url = await _page_websocket(http, port)
            async with http.ws_connect(page_url, max_msg_size=0, heartbeat=None) as ws:
                page = Page(ws)
                await page.call("Runtime.enable")
                await page.call("Page.enable")
                yield page
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


def _prepare(profile_dir: Path) -> Path:
    profile_dir.mkdir(parents=True, exist_ok=True)
    return profile_dir.parent / "chromium.log"


def _tail(log_path: Path) -> str:
    return log_path.read_text(errors="replace")[-2000:]


def _read_port(active: Path) -> int | None:
    if not active.exists():
        return None
    lines = active.read_text().split()
    return int(lines[0]) if lines and lines[0].isdigit() else None


async def _devtools_port(
    profile_dir: Path, process: asyncio.subprocess.Process, log_path: Path
) -> int:
    # The browser writes the port it picked (and the browser target's path) to this file.
    active = profile_dir / "DevToolsActivePort"
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        if process.returncode is not None:
            raise BrowserError(f"Chromium exited with {process.returncode}: {_tail(log_path)}")
        port = _read_port(active)
        if port is not None:
            return port
        await asyncio.sleep(0.1)
    raise BrowserError(f"Chromium opened no DevTools port: {_tail(log_path)}")


async def _page_websocket(http: aiohttp.ClientSession, port: int) -> str:
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT_SECONDS
    while asyncio.get_running_loop().time() < deadline:
        try:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json(content_type=None)
        except aiohttp.ClientError:
            targets = []
        for target in targets:
            if target.get("type") == "page" and "webSocketDebuggerUrl" in target:
                url: str = target["webSocketDebuggerUrl"]
                return url
        await asyncio.sleep(0.1)
    raise BrowserError("Chromium's DevTools listed no page")
