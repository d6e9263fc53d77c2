"""`gpt2 serve` in a subprocess on 127.0.0.1 and a free port (`--port 0`), ready once its
"serving ... at http://127.0.0.1:PORT/v1" line is on stderr. Used by tests/test_serve.py and
benchmarks/bench_serve.py."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tests.support.cli import gpt2_argv

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
READY = re.compile(r"serving .* at (http://127\.0\.0\.1:\d+)/v1")


class ServerProcess:
    """A running `gpt2 serve --host 127.0.0.1 --port 0 ARGS` (`argv0`: that `gpt2`, else the
    installed one); stderr is collected in `lines`."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 120,
        argv0: str | None = None,
    ) -> None:
        serve = ("serve", "--host", "127.0.0.1", "--port", "0", *args)
        argv = [argv0, *serve] if argv0 else gpt2_argv(*serve)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
            text=True,
            encoding="utf-8",
            errors="replace",
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        found = self.wait_for_line(READY, timeout)
        if found is None:
            self.kill()
            raise RuntimeError("gpt2 serve did not start:\n" + self.stderr)
        self.url = found.group(1)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def stderr(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str] | None:
        """The first stderr line matching `pattern`, waiting for it (None: the process ended
        or `timeout` passed first)."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if found := pattern.search(line):
                        return found
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    return None
                self._changed.wait(min(left, 0.5))

    def get(self, path: str, key: str | None = None) -> tuple[int, Any]:
        return request(self.url + path, key=key)

    def wait_until(self, check: Callable[[dict[str, Any]], bool], timeout: float = 60) -> dict:
        """Poll /health until `check(health)` holds; the health that satisfied it."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.get("/health")[1]
            if check(health):
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"/health never satisfied the check: {health}")
            time.sleep(0.02)

    def stop(self, sig: int | None = signal.SIGINT, timeout: float = 60) -> int:
        """Send `sig` (None: none, it is on its way out) and wait for the exit status."""
        if sig is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        self._reader.join(10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def request(
    url: str, body: Any = None, *, key: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """One HTTP request with the standard library: (status, parsed JSON body). A POST when
    `body` or `raw` is given."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with _DIRECT.open(req, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
