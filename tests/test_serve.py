"""tsdebug serve: the debugger in a real headless Chromium, through textual-serve.

The browser test needs Debian's chromium (``apt-get install -y chromium``;
.ci/run installs it when it can) and skips with the reason where it is absent.
It drives the browser over the DevTools protocol: the page loads, the
debugger's screen for the model arrives over the page's own websocket, a
screenshot is taken (kept where ``TSDEBUG_SHOTS`` names a folder), and two
tabs run two debugger processes.
"""

import asyncio
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
import torch

import graph_models as G
from tsdebug.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HAS_SERVE = True
try:
    import textual_serve  # noqa: F401
    import aiohttp  # noqa: F401
except ImportError:
    HAS_SERVE = False

needs_serve = pytest.mark.skipif(not HAS_SERVE, reason="textual-serve is not installed (pip install 'tsdebug[serve]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def unet(archive):
    torch.manual_seed(0)
    return archive(G.UNet(), "trace", example=(torch.randn(1, 3, 32, 32),), name="unet_served.pt")


@pytest.fixture
def server(unet):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tsdebug.cli", "serve", unet, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail("tsdebug serve exited: " + proc.stdout.read().decode(errors="replace"))
                time.sleep(0.1)
        yield f"http://localhost:{port}", port, unet
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the debugger processes it started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_serve_refuses_what_it_cannot_serve(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "missing.pt")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such file" in err[0]
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    assert main(["serve", str(model), "--port", "0"]) == 2
    assert "--port" in capsys.readouterr().err
    assert main(["serve", str(model), "--no-such-option"]) == 2


@needs_serve
def test_serve_listens_on_loopback_only(server):
    url, port, _ = server
    page = urllib.request.urlopen(url, timeout=10).read().decode()
    assert "textual" in page.lower() and f":{port}" in page
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("no /proc/net/tcp to read the listening sockets from")
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, p = local.rsplit(":", 1)
                if state == "0A" and int(p, 16) == port:  # LISTEN
                    listening.append(addr)
    assert listening
    loopback = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1, ::1
    assert set(listening) <= loopback, listening


class DevTools:
    """Just enough of the Chrome DevTools protocol: calls, and the websocket frames a page receives."""

    def __init__(self, ws):
        self.ws = ws
        self.n = 0
        self.frames: dict[str, list] = {}

    async def call(self, method, session=None, **params):
        self.n += 1
        msg = {"id": self.n, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_json(msg)
        while True:
            got = json.loads((await self.ws.receive()).data)
            if got.get("method") == "Network.webSocketFrameReceived":
                r = got["params"]["response"]
                data = base64.b64decode(r["payloadData"]) if r["opcode"] == 2 else r["payloadData"].encode()
                self.frames.setdefault(got.get("sessionId"), []).append(data)
            if got.get("id") == self.n:
                if "error" in got:
                    raise RuntimeError(got["error"])
                return got.get("result", {})


def served_processes(model: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"tsdebug.cli" in cmd and os.path.abspath(model).encode() in cmd and b"serve" not in cmd:
            pids.append(int(pid))
    return pids


@needs_serve
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_serve_in_headless_chromium(server, tmp_path):
    import aiohttp

    url, _port, model = server
    profile = tempfile.mkdtemp(prefix="tsdebug-chromium-")
    browser = subprocess.Popen([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                                "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                "--window-size=1400,900", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def drive():
        port_file = os.path.join(profile, "DevToolsActivePort")
        for _ in range(300):
            if os.path.exists(port_file) and open(port_file).read().count("\n") >= 1:
                break
            await asyncio.sleep(0.1)
        lines = open(port_file).read().split()
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{lines[0]}{lines[1]}", max_msg_size=0) as ws:
                dt = DevTools(ws)
                sessions, targets = [], []
                for _tab in range(2):  # two tabs: two sessions of the debugger
                    target = (await dt.call("Target.createTarget", url="about:blank"))["targetId"]
                    sid = (await dt.call("Target.attachToTarget", targetId=target, flatten=True))["sessionId"]
                    await dt.call("Network.enable", sid)
                    await dt.call("Page.enable", sid)
                    await dt.call("Page.navigate", sid, url=url)
                    sessions.append(sid)
                    targets.append(target)
                screen = b""
                for _ in range(240):  # the page connects, the debugger loads the model and draws
                    await asyncio.sleep(0.25)
                    await dt.call("Runtime.evaluate", sessions[0], expression="1")
                    screen = b"".join(dt.frames.get(sessions[0], []))
                    if b"program" in screen and b"Block.forward" in screen and b"inspector" in screen:
                        break
                await dt.call("Target.activateTarget", targetId=targets[0])
                await asyncio.sleep(0.5)  # the focused tab is drawn undimmed
                shot = await dt.call("Page.captureScreenshot", sessions[0], format="png")
                for _ in range(120):
                    if len(served_processes(model)) >= 2:
                        break
                    await asyncio.sleep(0.25)
                return screen, base64.b64decode(shot["data"]), len(served_processes(model))

    try:
        screen, png, processes = asyncio.run(drive())
    finally:
        browser.kill()
        browser.wait()
        shutil.rmtree(profile, ignore_errors=True)
    # the debugger's screen for this model reached the page: the program pane and its first node
    assert b"program" in screen and b"forward" in screen and b"Block.forward" in screen and b"inspector" in screen
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000  # a drawn screen, not a blank page
    out = os.environ.get("TSDEBUG_SHOTS") or str(tmp_path)
    with open(os.path.join(out, "serve-chromium.png"), "wb") as f:
        f.write(png)
    assert processes == 2  # each connection its own debugger
