"""Output files on S3 under faults: a fault-injecting HTTP proxy (threads, written here: moto has
none) in front of the moto server. Each transient fault ends with exactly one committed copy of
every file; a persistent one fails with one line, leaves no commit record, and a clean re-run
completes."""

from __future__ import annotations

import http.client
import json
import os
import posixpath
import re
import socket
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.cluster import storage

BUCKET = "fault-test"
ERRORS = {
    503: b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>",
    500: b"<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>",
}


class Rule:
    """Requests matching ``method`` and the ``pattern`` (a regex over path and query) get
    ``action`` ``times`` times (None: always): 503/500 (an error answer, the server untouched),
    ``reset`` (the connection torn down, no answer), ``lost`` (the server does it, the client sees
    a 500)."""

    def __init__(self, method: str, pattern: str, action, times: int | None):
        self.method, self.pattern, self.action, self.left = method, re.compile(pattern), action, times
        self.hits = 0

    def take(self, method: str, target: str) -> bool:
        if method != self.method or not self.pattern.search(target) or self.left == 0:
            return False
        self.hits += 1
        if self.left is not None:
            self.left -= 1
        return True


class FaultProxy:
    def __init__(self, upstream: str):
        up = urlparse(upstream)
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b""):
                                pass
                            return out
                        out += chunk
                return self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))

            def _answer(self, status: int, headers, body: bytes) -> None:
                self.send_response(status)
                length = str(len(body))
                for k, v in headers:
                    if k.lower() == "content-length" and self.command == "HEAD":
                        length = v  # a HEAD answer has no body but the object's length
                    elif k.lower() not in ("transfer-encoding", "content-length", "connection", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self) -> None:
                body = self._body()
                with proxy.lock:
                    rule = next((r for r in proxy.rules if r.take(self.command, self.path)), None)
                action = rule.action if rule else None
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                    return
                if action in ERRORS:
                    self._answer(action, [("Content-Type", "application/xml")], ERRORS[action])
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                if action == "lost":  # done on the server; the client hears an error
                    self._answer(500, [("Content-Type", "application/xml")], ERRORS[500])
                    return
                self._answer(resp.status, resp.getheaders(), data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def set(self, *rules: Rule) -> None:
        with self.lock:
            self.rules = list(rules)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def proxy(s3_server):
    p = FaultProxy(s3_server)
    yield p
    p.close()


@pytest.fixture
def through_proxy(proxy, monkeypatch, request):
    """Filesystems made from now on go through the proxy; (direct fs, output URI, path)."""
    direct, _ = storage.resolve(f"s3://{BUCKET}/x")
    if not direct.exists(BUCKET):
        direct.mkdir(BUCKET)
    uri = f"s3://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    # Few retries keep the persistent case short; the transient bursts need fewer still.
    monkeypatch.setenv("TRIBUNAL_STORAGE_OPTIONS", json.dumps({"config_kwargs": {"retries": {"max_attempts": 4, "mode": "standard"}}}))
    proxy.set()
    yield direct, uri, uri.split("://", 1)[1]
    proxy.set()


def committed_state(fs, path: str) -> tuple[dict, list[str]]:
    """({shard: record}, part files) as the store holds them."""
    fs.invalidate_cache()
    records = {}
    for p in fs.ls(storage.join(path, storage.COMMITS), detail=False):
        if not posixpath.basename(p).startswith("_"):
            r = json.loads(fs.cat_file(p))
            records[r["shard"]] = r
    parts = sorted(posixpath.basename(p) for p in fs.ls(path, detail=False) if posixpath.basename(p).startswith("part-"))
    return records, parts


def table(tag: str, rows: int = 50, width: int = 8) -> pa.Table:
    blob = [os.urandom(width).hex() for _ in range(rows)]
    return pa.table({"id": [f"{tag}{i}" for i in range(rows)], "blob": blob})


TRANSIENT = {
    "slowdown-burst": [Rule("PUT", r"/part-", 503, 3)],
    "500-burst": [Rule("PUT", r"", 500, 2), Rule("GET", r"", 500, 2)],
    "connection-resets": [Rule("PUT", r"/part-", "reset", 2), Rule("PUT", r"/_commits/part-", "reset", 1)],
    "put-lost": [Rule("PUT", r"/part-[^/]*\.parquet", "lost", 1)],
    "commit-record-put-lost": [Rule("PUT", r"/_commits/part-", "lost", 2)],
    "complete-multipart-lost": [Rule("POST", r"uploadId=", "lost", 1)],
}


@pytest.mark.parametrize("case", sorted(TRANSIENT))
def test_transient_faults_leave_exactly_one_committed_copy(case, proxy, through_proxy, monkeypatch):
    from tribunal.jobs.pipeline.outputs import OutputDir

    direct, uri, path = through_proxy
    big = case == "complete-multipart-lost"
    if big:  # a multipart upload: parts of S3's minimum size
        monkeypatch.setattr(storage, "UPLOAD_CHUNK", 5 << 20)
    out = OutputDir(uri)  # through the proxy
    out.prepare_run({"case": case})
    tables = {f"part-{i}.parquet": table(f"t{i}-", rows=8000 if big else 50, width=2048 if big else 8) for i in range(1 if big else 3)}
    proxy.set(*TRANSIENT[case])
    for name, t in tables.items():
        assert storage.write_parquet_atomic(out.fs, storage.join(out.path, name), t, t.schema)
    faults = sum(r.hits for r in proxy.rules)
    proxy.set()
    assert faults >= 1, "no fault was injected"  # the case did what it says
    records, parts = committed_state(direct, path)
    assert sorted(records) == sorted(n[: -len(".parquet")] for n in tables)  # one record per file
    assert parts == sorted(r["file"] for r in records.values())  # one copy per file, no orphan
    for name, t in tables.items():
        r = records[name[: -len(".parquet")]]
        assert pq.read_table(direct.open(storage.join(path, r["file"]), "rb")).equals(t)
    if big:
        assert records["part-0"]["bytes"] > 2 * storage.UPLOAD_CHUNK


def test_persistent_500_fails_with_one_line_and_no_commit_record_then_a_clean_rerun_completes(proxy, through_proxy, capsys, monkeypatch):
    from tribunal.jobs.cli import run_main

    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "jobs"))
    from test_vote import synthetic_trajectories

    from tribunal.schemas import arrow

    direct, uri, path = through_proxy
    src = storage.join(path, "traj")
    t = pa.Table.from_pylist(synthetic_trajectories(20, 3), schema=arrow.TRAJECTORY)
    assert storage.write_parquet_atomic(direct, storage.join(src, "part-0.parquet"), t, arrow.TRAJECTORY)
    argv = ["--input", f"s3://{src}", "--output", f"{uri}/votes"]
    monkeypatch.setenv("TRIBUNAL_STORAGE_OPTIONS", json.dumps({"config_kwargs": {"retries": {"max_attempts": 2, "mode": "standard"}}}))
    proxy.set(Rule("PUT", r"/votes/part-", 500, None))
    assert run_main("vote", argv) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "upload failed after retries" in err[0] and "votes/part-" in err[0], err
    assert proxy.rules[0].hits >= 3  # retried (1 + max_attempts) before giving up
    direct.invalidate_cache()
    votes = storage.join(path, "votes")
    assert not [p for p in direct.find(votes) if "/_commits/part-" in p]  # no commit record
    proxy.set()
    assert run_main("vote", argv) == 0  # a clean re-run completes
    records, parts = committed_state(direct, votes)
    assert len(records) == 1 and parts == [r["file"] for r in records.values()]
    manifest = json.loads(direct.cat_file(storage.join(votes, "_manifest.json")))
    # the retries, recorded as botocore runs them (max_attempts retries = 1 + 2 attempts)
    assert manifest["storage"]["config_kwargs"]["retries"] == {"mode": "standard", "total_max_attempts": 3}
