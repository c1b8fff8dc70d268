"""Starting the server: its folder, its token, its socket, and the lines it prints (uvicorn)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import IO, Any

from cellview.serve.security import is_loopback, new_token

RUNS_DIR = "serve"


def runs_root() -> Path:
    """Where servers keep their uploads: the user's cache folder (``CELLVIEW_CACHE_DIR`` when set)."""
    import platformdirs

    return Path(os.environ.get("CELLVIEW_CACHE_DIR") or platformdirs.user_cache_dir("cellview")) / RUNS_DIR


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def make_run_dir(root: Path | None = None) -> Path:
    """A fresh folder for this server (``run-<pid>-<random>``); folders of servers no longer running go."""
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob("run-*"):
        parts = old.name.split("-")
        if len(parts) >= 3 and parts[1].isdigit() and not _alive(int(parts[1])):
            shutil.rmtree(old, ignore_errors=True)
    path = root / f"run-{os.getpid()}-{secrets.token_hex(4)}"
    path.mkdir(mode=0o700)
    return path


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (port 0: a free one), made before uvicorn starts so the address printed is real."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def address_lines(host: str, port: int, token: str | None, generated: bool, runner: str) -> list[str]:
    shown = f"[{host}]" if ":" in host else host
    if host in ("0.0.0.0", "::"):
        shown = socket.gethostname()
    url = f"http://{shown}:{port}/"
    lines = []
    if token is None:
        lines.append(f"CellView is serving on {url} (this machine only)")
    else:
        lines.append(f"CellView is serving on {url}?token={token}")
        where = "this machine only" if is_loopback(host) else "anyone who can reach this machine and has the token"
        lines.append(f"  open that link; it carries the access token ({where}). Scripts send "
                     "'Authorization: Bearer TOKEN'.")
        if generated:
            lines.append("  The token was generated for this run; give --token to keep one across restarts.")
        if not is_loopback(host):
            lines.append("  Plain HTTP: the token and the slides cross the network unencrypted. Put it behind "
                         "an HTTPS proxy for anything beyond a trusted lab network.")
    lines.append(f"  Jobs run {runner}. Ctrl-C stops the server and removes its uploads.")
    return lines


def serve(config: Any, out: IO[str] = sys.stderr, generated_token: bool = False) -> int:
    """Run until Ctrl-C. ``config`` is an app.ServeConfig whose root exists."""
    import uvicorn

    from cellview.serve.app import create_app

    sock = bind(config.host, config.port)
    port = sock.getsockname()[1]
    app = create_app(config)
    server = app.server

    class Announce(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets=sockets)
            if not self.should_exit:
                runner = getattr(server.runner, "description", "in this process")
                for line in address_lines(config.host, port, config.token, generated_token, runner):
                    print(line, file=out, flush=True)

    uv_config = uvicorn.Config(app, log_level="warning", server_header=False, date_header=False,
                               timeout_graceful_shutdown=5, access_log=False)
    try:
        Announce(uv_config).run(sockets=[sock])
    finally:
        sock.close()
        shutil.rmtree(config.root, ignore_errors=True)
    return 0


class BackgroundServer:
    """The real server (uvicorn, a real socket) in a thread of this process: the browser tests and the load bench.

    ``with BackgroundServer(config) as url:`` gives ``http://127.0.0.1:PORT``; leaving stops it (and removes
    its folder, as Ctrl-C does).
    """

    def __init__(self, config: Any) -> None:
        self.config = config
        self.app: Any = None
        self._server: Any = None
        self._thread: Any = None
        self._sock: socket.socket | None = None

    def __enter__(self) -> str:
        import threading
        import time

        import uvicorn

        from cellview.serve.app import create_app

        self._sock = bind(self.config.host, self.config.port)
        port = self._sock.getsockname()[1]
        self.app = create_app(self.config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", access_log=False,
                                                     timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"http://{host}:{port}"

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        shutil.rmtree(self.config.root, ignore_errors=True)


def token_for(host: str, given: str | None) -> tuple[str | None, bool]:
    """(token, generated): a given token is used; beyond localhost one is generated when none is given."""
    if given:
        return given, False
    if is_loopback(host):
        return None, False
    return new_token(), True
