"""Prefect's ephemeral API server, started so that it does not outlive the process that uses it.

With no ``PREFECT_API_URL``, Prefect starts a server of its own (a uvicorn subprocess) the first
time a flow needs the API, and stops it at interpreter exit. A process killed with SIGKILL runs
no exit handlers, so that server lived on, orphaned, holding its port and SQLite file.
``start_ephemeral_api`` starts the same server up front (the one Prefect's client then reuses)
and a watchdog beside it: a tiny process that polls its parent and, when the parent is gone
however it died, stops the server (SIGTERM, then SIGKILL). A normal exit stops the watchdog
first, then Prefect stops its server as before.

The start-up timeout is Prefect's ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, which the
CLI sets to 300 s unless the user set it (``ctxvec.cli._common.prefect_env``).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys

# Run by ``python -S -c``: it must start fast and import nothing of ctxvec or Prefect.
_WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])
while os.getppid() == parent:
    time.sleep(0.5)
def prefect_server():
    try:
        with open(f"/proc/{server}/cmdline", "rb") as f:
            return b"prefect" in f.read()
    except FileNotFoundError:
        return not os.path.isdir("/proc")  # no /proc (macOS): trust the pid
for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 0.0)):
    if not prefect_server():
        break
    try:
        os.kill(server, sig)
    except ProcessLookupError:
        break
    end = time.monotonic() + wait
    while time.monotonic() < end and prefect_server():
        time.sleep(0.2)
"""


def start_ephemeral_api() -> int | None:
    """Start Prefect's ephemeral server now, watched, when no API URL is set (else nothing).
    -> the server's pid, or None."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return None
    server = SubprocessASGIServer()  # the instance Prefect's clients take when no URL is set
    if server.running and server.server_process is not None:
        return server.server_process.pid
    server.start()
    assert server.server_process is not None
    pid = server.server_process.pid
    watchdog = subprocess.Popen(
        [sys.executable, "-S", "-c", _WATCHDOG, str(os.getpid()), str(pid)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    atexit.register(_stop, watchdog)  # runs before Prefect's own stop (registered earlier)
    return pid


def _stop(watchdog: subprocess.Popen) -> None:
    watchdog.kill()
    watchdog.wait()
