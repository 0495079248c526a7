"""A fault-injecting HTTP/1.1 proxy on loopback, between the openai engine and a real server.

It listens on ``127.0.0.1`` (a free port) in a thread of the test process and forwards each
request to the upstream server (``127.0.0.1`` too), unless the fault plan says otherwise for that
request. Faults (``plan``: a list consumed in order by the POST requests, one entry each; ``None``
forwards):

- ``"429"``: answers 429 with ``Retry-After: RETRY_AFTER``, without forwarding;
- ``"500"``: answers 500, without forwarding;
- ``"reset"``: forwards, then sends the client half of the server's answer and resets the
  connection (the server did the work: the ambiguous failure that a retry must not double);
- ``"stall"``: reads the request and never answers (the client's timeout must fire).

``down()`` closes the listening socket (connections are refused, as from a dead server) and
``up()`` listens again on the same port. ``upstream=None``: a server that lists one model, ``m``,
and answers 503 to every other request that is not faulted (it never recovers). Every request's method, path and headers are recorded
(``seen``), and the counts of what was done (``counts``): ``forwarded``, ``fault_429`` ... .
Only loopback addresses are used.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections import Counter

RETRY_AFTER = "1"


class FaultProxy:
    def __init__(self, upstream_port: int | None, plan: list | None = None):
        self.upstream_port = upstream_port
        self.plan = list(plan or [])
        self.counts: Counter = Counter()
        self.seen: list[tuple[str, str, dict]] = []
        self.lock = threading.Lock()
        self.port: int | None = None
        self._server = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.up()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def up(self) -> None:
        async def start():
            self._server = await asyncio.start_server(self._client, "127.0.0.1", self.port or 0, reuse_address=True)
            self.port = self._server.sockets[0].getsockname()[1]

        self._call(start())

    def down(self) -> None:
        """Stop listening and drop the open connections: the server is gone."""

        async def stop():
            self._server.close()
            for t in [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                t.cancel()

        self._call(stop())

    def close(self) -> None:
        try:
            self.down()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def add_faults(self, plan: list) -> None:
        with self.lock:
            self.plan.extend(plan)

    def posts(self, path: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.seen if m == "POST" and p.endswith(path))

    def _next_fault(self, method: str):
        with self.lock:
            if method == "POST" and self.plan:
                return self.plan.pop(0)
            return None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                with self.lock:
                    self.seen.append((method, path, headers))
                fault = self._next_fault(method)
                if fault in ("429", "500"):
                    self.counts[f"fault_{fault}"] += 1
                    extra = {"Retry-After": RETRY_AFTER} if fault == "429" else {}
                    writer.write(_answer(int(fault), {"error": {"message": f"injected {fault}"}}, extra))
                    await writer.drain()
                    continue
                if fault == "stall":
                    self.counts["fault_stall"] += 1
                    await reader.read()  # until the client gives up and closes
                    return
                if self.upstream_port is None and method == "GET" and path.endswith("/models"):
                    writer.write(_answer(200, {"object": "list", "data": [{"id": "m", "object": "model"}]}))
                    await writer.drain()
                    continue
                if self.upstream_port is None:
                    self.counts["no_upstream"] += 1
                    writer.write(_answer(503, {"error": {"message": "no upstream"}}))
                    await writer.drain()
                    continue
                answer = await self._forward(head, headers, body)
                self.counts["forwarded"] += 1
                if fault == "reset":
                    self.counts["fault_reset"] += 1
                    writer.write(answer[: len(answer) // 2])
                    await writer.drain()
                    _reset(writer)
                    return
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            _reset(writer)
            raise
        finally:
            if not writer.is_closing():
                writer.close()

    async def _forward(self, head: bytes, headers: dict, body: bytes) -> bytes:
        """The upstream's whole answer to this request (asked on a fresh connection, closed after),
        rewritten to keep the client's connection open."""
        r, w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        lines = [ln for ln in head.decode("latin-1").split("\r\n") if ln and not ln.lower().startswith("connection:")]
        w.write(("\r\n".join(lines) + "\r\nConnection: close\r\n\r\n").encode("latin-1") + body)
        await w.drain()
        raw = await r.read()
        w.close()
        top, _, payload = raw.partition(b"\r\n\r\n")
        out = [ln for ln in top.decode("latin-1").split("\r\n") if not ln.lower().startswith(("connection:", "transfer-encoding:", "content-length:"))]
        if b"transfer-encoding: chunked" in top.lower():
            payload = _unchunk(payload)
        out.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1") + payload


def _answer(status: int, data: dict, headers: dict | None = None) -> bytes:
    body = json.dumps(data).encode()
    reason = {429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _unchunk(data: bytes) -> bytes:
    out, i = b"", 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return out
        out += data[j + 2 : j + 2 + size]
        i = j + 2 + size + 2


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), as a crashed peer's kernel does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


# ---------------------------------------------------------------- a real vLLM server on loopback
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class VLLMServer:
    """vLLM's OpenAI server (``python -m vllm.entrypoints.openai.api_server``) on a free loopback
    port, for one test module: float32 (the in-process engines' numbers), eager, a small KV cache
    (5% of RAM on the CPU build), prompts prefilled whole (the CPU build's seeded-request crash,
    see ``vllm_engine.engine_args``), prefix caching and cached-token usage on. Its log goes to
    ``log`` (read it when it does not come up)."""

    def __init__(self, model: str, log_path, extra: tuple[str, ...] = (), start_timeout_s: float = 600.0):
        import os
        import subprocess
        import sys
        import time
        import urllib.request

        self.port = free_port()
        self.log_path = log_path
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--host", "127.0.0.1",
               "--port", str(self.port), "--dtype", "float32", "--gpu-memory-utilization", "0.05", "--enforce-eager",
               "--load-format", "safetensors", "--max-model-len", "1024", "--no-enable-chunked-prefill",
               "--max-num-batched-tokens", "2048", "--enable-prefix-caching", "--enable-prompt-tokens-details", "--uvicorn-log-level", "warning",
               *extra]  # fmt: skip
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING"}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the vLLM server exited ({self.proc.returncode}); its log: {log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v1/models", timeout=2) as r:
                    self.models = [m["id"] for m in json.loads(r.read())["data"]]
                    return
            except OSError:
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer within {start_timeout_s:.0f}s; its log: {log_path}")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        import os
        import signal
        import subprocess

        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=30)
        self._log.close()
