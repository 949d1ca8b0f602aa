"""``tsdebug serve MODEL``: the debugger in a browser, through textual-serve.

Each connection starts its own ``tsdebug MODEL ...`` process (its own
session, its own machine).  The page runs the model on this machine, so the
server listens on the loopback interface unless the user names a host.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Sequence

LOOPBACK = ("localhost", "127.0.0.1", "::1")


def open_command(model: str, open_args: Sequence[str]) -> str:
    """The shell command each connection runs: this Python, tsdebug's debugger, the user's options."""
    parts = [sys.executable, "-m", "tsdebug.cli", os.path.abspath(model), *open_args]
    return " ".join(shlex.quote(p) for p in parts)


def serve(model: str, open_args: Sequence[str], host: str = "localhost", port: int = 8000) -> int:
    """Serve the debugger on ``host:port`` until interrupted; returns the exit code."""
    try:
        from textual_serve.server import Server
    except ImportError:
        print("tsdebug: error: tsdebug serve needs textual-serve: pip install 'tsdebug[serve]' "
              "(or pip install textual-serve)", file=sys.stderr)
        return 2
    if host not in LOOPBACK:
        print(f"tsdebug: serving on {host}: anyone who can reach {host}:{port} can run {os.path.basename(model)} "
              "on this machine", file=sys.stderr)
    url_host = f"[{host}]" if ":" in host else host
    server = Server(open_command(model, open_args), host=host, port=port,
                    title=f"tsdebug {os.path.basename(model)}", public_url=f"http://{url_host}:{port}")
    print(f"tsdebug: serving the debugger on {model} at http://{url_host}:{port} (Ctrl+C stops)", flush=True)
    try:
        server.serve()
    except OSError as exc:  # the port is taken, the host is not ours
        print(f"tsdebug: error: cannot listen on {host}:{port}: {exc.strerror or exc}; choose another --port",
              file=sys.stderr)
        return 2
    return 0
