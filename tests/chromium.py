"""Headless Chromium driven over the DevTools protocol, for tests that click through a page.

A real browser, real mouse events at an element's on-screen centre (Input.dispatchMouseEvent),
and the page's DOM read back with Runtime.evaluate. The websocket client is aiohttp's (Ray
depends on it). Tests skip when Chromium is not installed.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(n)), None)



class BetweenDocuments(RuntimeError):
    """Chromium's answer to a call made while its page was navigating to another document."""

class Browser:
    """One headless Chromium with one page; close() ends the process it started."""

    def __init__(self) -> None:
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install -y chromium); .ci/run "
                        "installs it")
        import aiohttp

        self.profile = Path(tempfile.mkdtemp(prefix="thresher-chromium-"))
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--allow-file-access-from-files", "--window-size=1400,1000",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.loop = asyncio.new_event_loop()
        self.ids = itertools.count(1)

        async def connect() -> tuple[Any, Any]:
            session = aiohttp.ClientSession()
            for _ in range(100):
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json(content_type=None)
                             if t["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.1)
            ws = await session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
            return session, ws

        self.session, self.ws = self.loop.run_until_complete(connect())

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        async def call() -> dict[str, Any]:
            msg_id = next(self.ids)
            await self.ws.send_str(json.dumps({"id": msg_id, "method": method,
                                               "params": params}))
            while True:
                reply = json.loads((await self.ws.receive(timeout=60)).data)
                if reply.get("id") == msg_id:
                    if "error" in reply and "navigated" in reply["error"].get("message", ""):
                        raise BetweenDocuments(f"{method}: {reply['error']}")
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

        return self.loop.run_until_complete(call())

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except (AssertionError, BetweenDocuments):  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expression!r} on "
                             f"{self.evaluate('location.href')}")

    def open(self, url: str) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for(f"location.href.startsWith({json.dumps(url)}) && "
                      "document.readyState === 'complete'")

    def click(self, selector: str) -> None:
        """A left click at the centre of the first element matching `selector`."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "if (!e) return null; e.scrollIntoView({block: 'center'}); "
            "const r = e.getBoundingClientRect(); "
            "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        assert box is not None, f"nothing matches {selector!r} on {self.evaluate('location.href')}"
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.loop.run_until_complete(self.ws.close())
            self.loop.run_until_complete(self.session.close())
            self.loop.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)
