"""Fixtures: real redis-server and memcached processes on free loopback ports (stopped by pid),
and a runner for code in a fresh interpreter with a given ddf configuration."""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

# Caches built without a directory of their own use the default one ($XDG_CACHE_HOME/ddf): a
# fresh one for the session (child interpreters inherit it), so that the suite leaves nothing
# in the user's ~/.cache/ddf, such as an outage of a test server that never comes back.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ddf-pytest-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(proc, port, name):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within 20 s")


class Server:
    def __init__(self, name, args, port):
        exe = shutil.which(name) or f"/usr/bin/{name}"
        if not os.path.exists(exe):
            pytest.fail(f"{name} is not installed (scripts/deps installs it)")
        self.port = port
        self.host = "127.0.0.1"
        self.proc = subprocess.Popen([exe, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(self.proc, port, name)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()


def start_redis(*extra):
    port = _free_port()
    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--protected-mode", "no", *extra]
    return Server("redis-server", args, port)


def start_memcached(*extra):
    port = _free_port()
    args = ["-l", "127.0.0.1", "-p", str(port), "-U", "0", *extra]
    if os.geteuid() == 0:
        args += ["-u", "root"]
    return Server("memcached", args, port)


@pytest.fixture(scope="session")
def redis_server():
    s = start_redis()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def memcached_server():
    s = start_memcached()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def memcached_server2():
    s = start_memcached()
    yield s
    s.stop()


@pytest.fixture
def redis_py(redis_server):
    import redis

    r = redis.Redis(host=redis_server.host, port=redis_server.port)
    r.flushall()
    yield r
    r.close()


def run_python(code, ini=None, env=None, tmp_path=None):
    """Runs `code` in a fresh interpreter with DDF_CONFIG pointing at `ini` (text); returns its
    stdout, failing the test with its stderr when it exits non-zero."""
    e = {k: v for k, v in os.environ.items() if not k.startswith(("DDF_", "REDIS_"))}
    if ini is not None:
        path = os.path.join(str(tmp_path), "ddf.ini")
        with open(path, "w") as f:
            f.write(ini)
        e["DDF_CONFIG"] = path
    e.update(env or {})
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e,
                       cwd=str(tmp_path) if tmp_path else None, timeout=120)
    if p.returncode != 0:
        pytest.fail(f"exit {p.returncode}\n--- code\n{code}\n--- stderr\n{p.stderr}")
    return p.stdout
