"""``ctxvec schedule``'s local Prefect server must be its own: on a shared machine another
process can take the preferred port between the check and the bind (two ``make test`` runs at
once did), and a health check answered by that other server must not count as ours."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading

import pytest
from ctxvec_flows import deployments as d


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"true")

    def log_message(self, *args):
        pass


@pytest.fixture
def foreign_server():
    """Another process's server answering ``/api/health`` on a port of its own."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_a_health_check_answered_by_another_process_is_not_ours(foreign_server, tmp_path):
    port = foreign_server
    # ours: a process that never listens and exits (as a server that lost the port race does)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        with pytest.raises(RuntimeError, match="exited"):
            d._wait_healthy(f"http://127.0.0.1:{port}/api/health", proc, 120,
                            tmp_path / "server.log", port)
    finally:
        proc.kill()
        proc.wait()


def test_the_process_that_listens_is_found_in_its_tree(tmp_path):
    port = d._port_free(0)
    # a parent that starts the listener as a child, as `prefect server start` may
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-m', 'http.server', "
            f"'--bind', '127.0.0.1', '{port}'])")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        d._wait_healthy(f"http://127.0.0.1:{port}/", proc, 300, tmp_path / "server.log", port)
        assert d._owns_port(proc.pid, port) is not False
        assert d._owns_port(proc.pid, port + 1 if port < 65535 else port - 1) is not True
    finally:
        import os
        import signal

        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


@pytest.mark.slow  # a real `prefect server start` (a minute or more on a loaded machine)
def test_the_local_server_moves_to_another_port_when_the_preferred_one_is_taken(
        foreign_server, monkeypatch, tmp_path):
    """The port was free when checked, then another server took it: ours starts elsewhere."""
    taken = foreign_server
    real_port_free = d._port_free
    checks = []

    def free_when_first_checked(p):  # the race: free at the check, taken at the bind
        checks.append(p)
        return p if p == taken and len(checks) == 1 else real_port_free(p)

    monkeypatch.setattr(d, "_port_free", free_when_first_checked)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    from prefect.settings import PREFECT_HOME, temporary_settings

    with temporary_settings(updates={PREFECT_HOME: str(tmp_path / "prefect")}):
        with d.local_server(port=taken) as url:
            assert f":{taken}/" not in url
            import urllib.request

            with urllib.request.urlopen(f"{url}/health", timeout=30) as r:
                assert r.status == 200
