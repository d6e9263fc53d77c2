"""A fake Hugging Face Hub for the tests: serves checkpoint folders under repo ids on 127.0.0.1,
speaking the part of the protocol huggingface_hub's `hf_hub_download` uses against HF_ENDPOINT
(read from huggingface_hub 2.x's file_download.py and utils/_http.py):

- HEAD and GET `/{repo_id}/resolve/{revision}/{filename}`, revision a branch, a tag or a commit
  (URL-quoted). Answers carry `X-Repo-Commit`, `ETag` (git blob sha1, or the sha256 for LFS
  files), and for LFS files `X-Linked-Etag` / `X-Linked-Size`; GET honours `Range: bytes=N-`.
- Errors as the Hub signals them: `X-Error-Code: RepoNotFound | RevisionNotFound |
  EntryNotFound` (a missing file's 404 still carries `X-Repo-Commit`, which the cache records).
- Private repos answer 401 RepoNotFound without `Authorization: Bearer <token>`.

Fault switches: `drop` (close the connection after N bytes of a file's body), `corrupt` (flip one
byte of a file's body, headers unchanged), `delay` (seconds between body chunks), `fail_status`
(every request answers that HTTP status), `fail_after_drop` (set `fail_status` once a drop
happened), `hold` (stall a file's body after N bytes until `release()`, as a transfer that
hangs: time to kill the client mid-download). `log` records every request.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".ot", ".onnx", ".tflite")
CHUNK = 16 * 1024


@dataclass
class Request:
    method: str
    path: str
    filename: str | None = None
    range: str | None = None
    authorization: str | None = None


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]


@dataclass
class Repo:
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha
    commits: dict[str, Commit] = field(default_factory=dict)
    token: str | None = None  # private: this bearer token is required


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.drop: dict[str, list[int]] = {}  # filename -> byte offsets to cut at, one per GET
        self.corrupt: set[str] = set()
        self.delay = 0.0
        self.fail_status: int | None = None
        self.fail_after_drop: int | None = None  # after a drop, every request gets this status
        self.hold: dict[str, int] = {}  # filename -> byte offset where a GET's body stalls
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.running = True

    def release(self) -> None:
        """Let every body stalled by `hold` go on."""
        self._released.set()

    def stop(self) -> None:
        self.release()
        if self.running:
            self._server.shutdown()
            self._server.server_close()
            self.running = False

    # -- content ------------------------------------------------------------------------------

    def add_repo(
        self,
        repo_id: str,
        folder: Path | None = None,
        *,
        revision: str = "main",
        files: dict[str, bytes] | None = None,
        token: str | None = None,
        commit: str | None = None,
    ) -> str:
        """Commit the files of `folder` (plus `files`) to `repo_id` at branch or tag `revision`;
        returns the commit sha. `commit` forces the sha (default: derived from the repo id and
        the content), e.g. to serve mirrors pushed from one git history at one commit."""
        content: dict[str, bytes] = {}
        if folder is not None:
            for path in sorted(Path(folder).rglob("*")):
                if path.is_file():
                    content[path.relative_to(folder).as_posix()] = path.read_bytes()
        content.update(files or {})
        repo = self.repos.setdefault(repo_id, Repo())
        repo.token = token if token is not None else repo.token
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(content):
            digest.update(name.encode() + b"\0" + content[name])
        sha = commit or digest.hexdigest()
        repo.commits[sha] = Commit(sha, content)
        repo.refs[revision] = sha
        return sha

    # -- the log --------------------------------------------------------------------------------

    def requests(self, method: str | None = None, filename: str | None = None) -> list[Request]:
        with self._lock:
            return [
                r
                for r in self.log
                if (method is None or r.method == method)
                and (filename is None or r.filename == filename)
            ]

    def gets(self, filename: str) -> int:
        return len(self.requests("GET", filename))

    def _record(self, request: Request) -> None:
        with self._lock:
            self.log.append(request)


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _serve(self, body: bool) -> None:
            path = urlsplit(self.path).path
            repo_id, revision, filename = _parse(path)
            hub._record(
                Request(
                    self.command,
                    path,
                    filename,
                    self.headers.get("Range"),
                    self.headers.get("Authorization"),
                )
            )
            if hub.fail_status is not None:
                return self._error(hub.fail_status, None)
            if repo_id is None or filename is None:
                return self._error(404, None)
            repo = hub.repos.get(repo_id)
            if repo is None or (
                repo.token is not None
                and self.headers.get("Authorization") != f"Bearer {repo.token}"
            ):
                return self._error(401, "RepoNotFound")
            sha = repo.refs.get(revision, revision if revision in repo.commits else None)
            if sha is None:
                return self._error(404, "RevisionNotFound")
            data = repo.commits[sha].files.get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", sha)
            self._send_file(sha, filename, data, body)

        def _send_file(self, sha: str, filename: str, data: bytes, body: bool) -> None:
            start = 0
            range_header = self.headers.get("Range")
            if body and range_header and range_header.startswith("bytes="):
                start = int(range_header[len("bytes=") :].split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", sha)
            self.send_header("Accept-Ranges", "bytes")
            if filename.endswith(LFS_SUFFIXES):
                sha256 = hashlib.sha256(data).hexdigest()
                self.send_header("ETag", f'"{sha256}"')
                self.send_header("X-Linked-Etag", f'"{sha256}"')
                self.send_header("X-Linked-Size", str(len(data)))
            else:
                self.send_header("ETag", f'"{git_blob_sha1(data)}"')
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            if not body:
                return
            if filename in hub.corrupt:
                flipped = bytearray(data)
                flipped[len(data) // 2] ^= 0xFF
                data = bytes(flipped)
            cut = None
            with hub._lock:
                if hub.drop.get(filename):
                    cut = hub.drop[filename].pop(0)
            hold = hub.hold.get(filename)
            self._stream(data, start, cut, hold if hold is not None and hold > start else None)

        def _stream(
            self, data: bytes, start: int, cut: int | None, hold: int | None = None
        ) -> None:
            import time

            pos = start
            while pos < len(data):
                if hold is not None and pos >= hold:
                    hub._released.wait(timeout=120)  # a stalled transfer, until release()
                    hold = None
                end = min(pos + CHUNK, len(data))
                if hold is not None and end > hold:
                    end = hold
                if cut is not None and end > cut:
                    end = max(cut, pos)
                try:
                    self.wfile.write(data[pos:end])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                    return
                pos = end
                if cut is not None and pos >= cut:
                    # Drop the connection mid-body, as a flaky network would.
                    if hub.fail_after_drop is not None:
                        hub.fail_status = hub.fail_after_drop
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if hub.delay:
                    time.sleep(hub.delay)

    return Handler


def _parse(path: str) -> tuple[str | None, str, str | None]:
    """`/{owner}/{name}/resolve/{revision}/{file...}` -> (repo_id, revision, filename)."""
    parts = path.lstrip("/").split("/")
    if len(parts) < 5 or parts[2] != "resolve":
        return None, "", None
    return (
        f"{unquote(parts[0])}/{unquote(parts[1])}",
        unquote(parts[3]),
        unquote("/".join(parts[4:])),
    )


# -- helpers for the tests that drive the `gpt2` command against the fake Hub --------------------


def gpt2_command() -> list[str]:
    """The installed `gpt2` console script (the one next to this interpreter when there is one)."""
    import os
    import shutil
    import sys

    found = shutil.which("gpt2", path=os.path.dirname(sys.executable)) or shutil.which("gpt2")
    assert found, "the gpt2 console script is not installed (pip install -e .)"
    return [found]


def run_gpt2(*args: str, env: dict[str, str] | None = None, input: str | None = None, timeout=120):
    """Run `gpt2 ARGS` with the test's environment (HF_HOME, HF_ENDPOINT...) plus `env`."""
    import os
    import subprocess

    return subprocess.run(
        [*gpt2_command(), *args],
        env={**os.environ, **(env or {})},
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def repo_cache(repo_id: str) -> Path:
    """The cache folder of `repo_id` under the test's HF_HOME."""
    import os

    return Path(os.environ["HF_HOME"]) / "hub" / ("models--" + repo_id.replace("/", "--"))
