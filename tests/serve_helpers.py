"""A real ``attncluster serve`` process for the serve tests, on a loopback port."""

import os
import signal
import subprocess
import sys
import threading
import time

import httpx


def _read_stderr(proc, lines):
    for line in proc.stderr:
        lines.append(line)


class Server:
    """``python -m attncluster serve ... --port 0`` in a subprocess; the port is read from its first line."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "attncluster", "serve", *map(str, args), "--port", "0"],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        self.lines = []
        first = ""
        while not first.startswith("serve: http://") and (first or not self.lines):  # warnings may come first
            first = self.proc.stderr.readline()
            self.lines.append(first)
        threading.Thread(target=_read_stderr, args=(self.proc, self.lines), daemon=True).start()
        assert first.startswith("serve: http://127.0.0.1:"), "".join(self.lines)
        self.url = first.split()[1]
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
