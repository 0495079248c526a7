"""Progress lines for long jobs: they move with the work, not only when a shard commits.

Two streams of counts meet here:

- **live**: engine stages count each request as it finishes (``Reporter`` in the actor, posted at
  most once a second to the run's ``Board`` in Ray's key-value store, which the driver reads every
  couple of seconds): requests, rows generated (trajectories, judgments, scores) and tokens;
- **committed**: the write stage's per-shard counts (samples, rows, parse failures ...), which are
  the run's truth and the basis of the end summary.

A line is printed every ``every_s`` seconds (and never less often than every 10 s while the job
runs, engine start-up included), to stderr, so it reads well in a terminal and in a cluster log::

    [sample] 12/24 samples (50%) | 51/96 traj, 2.0 traj/s, 410 tok/s | parse fail 2.1% | 25s | eta 23s

The ETA comes from the live rows: (rows still to generate) / (rows per second since the first one).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter


def fmt_duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


NAMESPACE = "tribunal_progress"


class Board:
    """Where a run's engine actors post their live counts: Ray's GCS key-value store (no extra
    process), one key per actor under the run's prefix, each holding that actor's cumulative
    counts, so a lost or repeated post changes nothing. The driver sums the keys (``read``) and
    deletes them at the end (``close``). Picklable: only the prefix travels to the actors."""

    def __init__(self, prefix: str | None = None) -> None:
        import uuid

        self.prefix = prefix or f"run-{uuid.uuid4().hex}/"

    def post(self, actor: str, counts: dict, loads: list[float]) -> None:
        import json

        from ray.experimental.internal_kv import _internal_kv_put

        _internal_kv_put(self.prefix + actor, json.dumps({"counts": counts, "loads": loads}), namespace=NAMESPACE)

    def read(self) -> tuple[Counter, list[float]]:
        """(the counts summed over actors, every actor's engine start-up time)."""
        import json

        from ray.experimental.internal_kv import _internal_kv_get, _internal_kv_list

        total, loads = Counter(), []
        for key in _internal_kv_list(self.prefix, namespace=NAMESPACE):
            raw = _internal_kv_get(key, namespace=NAMESPACE)
            if raw:
                posted = json.loads(raw)
                total.update(posted["counts"])
                loads.extend(posted["loads"])
        return total, loads

    def close(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(self.prefix, del_by_prefix=True, namespace=NAMESPACE)


class Reporter:
    """In an engine actor: counts finished requests and posts this actor's totals to the run's
    ``Board`` at most every ``every_s`` seconds (progress is advisory: the shards are the truth).
    Thread-safe: vLLM's results arrive on its event-loop thread. ``None`` board: a no-op."""

    def __init__(self, board: Board | None, every_s: float = 1.0):
        import uuid

        self.board, self.every_s = board, every_s
        self.actor = uuid.uuid4().hex
        self.counts: Counter = Counter()
        self.loads: list[float] = []
        self.last = 0.0
        self.lock = threading.Lock()

    def add(self, **counts: int) -> None:
        if self.board is None:
            return
        with self.lock:
            self.counts.update(counts)
            if time.monotonic() - self.last >= self.every_s:
                self._post()

    def engine_loaded(self, seconds: float) -> None:
        """Posted at once: the driver's line says the engine is up."""
        if self.board is None:
            return
        with self.lock:
            self.loads.append(seconds)
            self._post()

    def flush(self) -> None:
        if self.board is None:
            return
        with self.lock:
            self._post()

    def _post(self) -> None:
        self.last = time.monotonic()
        try:
            self.board.post(self.actor, dict(self.counts), self.loads)
        except Exception:  # noqa: BLE001 - a lost progress post costs nothing but the line
            pass


class Progress:
    """The periodic line: input units committed of the total, live rows and tokens, rates, ETA.

    ``unit``: what an input row is (samples, rollouts, trajectories); ``rows``: what the engines
    produce (traj, judgments, scores); ``rows_total``: how many of those the run expects (for the
    ETA; None: from the committed share). ``failures`` (parse failures among committed rows) is
    shown when ``show_failures``.
    """

    def __init__(self, job: str, total: int, unit: str = "samples", rows: str = "traj", rows_total: int | None = None,
                 every_s: float = 5.0, stream=None, engines: int = 0, show_failures: bool = True):
        self.job, self.total, self.unit, self.rows_name = job, total, unit, rows
        self.rows_total = rows_total
        self.every_s = min(every_s, 10.0)
        self.stream = stream or sys.stderr
        self.show_failures = show_failures
        self.start = time.monotonic()
        self.lock = threading.RLock()
        self.last_print = self.start
        self._printed: tuple | None = None  # the counts at the last line
        # committed (from the shards)
        self.samples = 0
        self.quarantined = 0  # input rows set aside: they count as handled
        self.rows = 0
        self.failures = 0
        self.tokens = 0
        self.request_prompt_tokens = 0  # prompt tokens sent to the engines (once per request)
        self.cached_prompt_tokens = 0  # of those, served by the engines' prefix caches
        # live (from the engines, as requests finish)
        self.live: Counter = Counter()
        self._first: tuple[float, int] | None = None  # (time, rows) when the first shard landed
        self._last_t = 0.0
        self.engines = engines  # engine actors in the pool (0: not an engine job)
        self.engine_load_s: list[float] = []  # start-up of each engine actor, from its first shard (the manifest's)
        self.engines_up = 0  # engines reported up (the console line)
        self._up_at: float | None = None  # when the first engine came up
        self._loading_since: float | None = None

    def say(self, text: str) -> None:
        print(f"[{self.job}] {text}", file=self.stream, flush=True)

    def engines_loading(self, what: str) -> None:
        """The line printed before the engines are up (then the periodic line shows the wait)."""
        if self.engines:
            self._loading_since = time.monotonic()
            self.say(f"loading {self.engines} {what} engine(s)")

    def add_live(self, counts: dict, loads: list[float] = ()) -> None:
        """The engines' live totals (``Board.read``): requests, rows, tokens; engine start-ups."""
        with self.lock:
            for load_s in list(loads)[self.engines_up:]:
                self._engine_up(load_s)
            self.live = Counter(counts)

    def _engine_up(self, load_s: float) -> None:
        self.engines_up += 1
        if self._up_at is None:
            self._up_at = time.monotonic()
        self._loading_since = None
        of = f" ({self.engines_up}/{self.engines})" if self.engines > 1 else ""
        self.say(f"engine loaded in {load_s:.1f}s{of}")

    def update(self, samples: int, rows: int, failures: int, tokens: int = 0, engine_load_s: float = 0.0,
               request_prompt_tokens: int = 0, cached_prompt_tokens: int = 0) -> None:
        """A committed shard's counts."""
        with self.lock:
            self.samples += samples
            self.rows += rows
            self.failures += failures
            self.tokens += tokens
            self.request_prompt_tokens += request_prompt_tokens
            self.cached_prompt_tokens += cached_prompt_tokens
            if engine_load_s > 0:
                self.engine_load_s.append(engine_load_s)
                if self.engines_up < len(self.engine_load_s):  # no live report of it came first
                    self._engine_up(engine_load_s)
            now = time.monotonic()
            if self._first is None:
                self._first = (now, self.rows)
            self._last_t = now
        self.tick()

    def steady_rate(self) -> float | None:
        """Rows/s between the first and the last shard: the pace once engines are up."""
        if self._first is None or self._last_t <= self._first[0]:
            return None
        return (self.rows - self._first[1]) / (self._last_t - self._first[0])

    def tick(self, force: bool = False) -> None:
        """Print the line if it is due (every ``every_s`` seconds)."""
        with self.lock:
            now = time.monotonic()
            if force or now - self.last_print >= self.every_s:
                self.last_print = now
                self._printed = self._state()
                print(self.line(), file=self.stream, flush=True)

    def _state(self) -> tuple:
        return (self.samples, self.quarantined, self.rows, int(self.live.get("rows", 0)))

    def line(self) -> str:
        now = time.monotonic()
        elapsed = max(now - self.start, 1e-9)
        handled = min(self.samples + self.quarantined, self.total) if self.total else self.samples + self.quarantined
        pct = 100.0 * handled / self.total if self.total else 100.0
        aside = f", {self.quarantined} quarantined" if self.quarantined else ""
        parts = [f"[{self.job}] {handled}/{self.total} {self.unit} ({pct:.0f}%{aside})"]
        live_rows = max(int(self.live.get("rows", 0)), self.rows)
        if self._loading_since is not None and not live_rows:
            parts.append(f"engines loading for {fmt_duration(now - self._loading_since)}")
        else:
            of = f"/{self.rows_total}" if self.rows_total and handled < self.total else ""
            text = f"{live_rows}{of} {self.rows_name}"
            since = self._rate_since()
            if since is not None and now - since >= 1:
                text += f", {live_rows / (now - since):.1f} {self.rows_name}/s"
            tokens = int(self.live.get("completion_tokens", 0)) or self.tokens
            if tokens and since is not None and now - since >= 1:
                text += f", {tokens / max(now - since, 1e-9):.0f} tok/s"
            parts.append(text)
        if self.show_failures and self.rows:
            parts.append(f"parse fail {100.0 * self.failures / self.rows:.1f}%")
        parts.append(fmt_duration(elapsed))
        eta = self.eta(now, live_rows, handled)
        if eta is not None:
            parts.append(f"eta {fmt_duration(eta)}")
        return " | ".join(parts)

    def _rate_since(self) -> float | None:
        """Rates count from when the engines came up (their start-up is not the work's pace)."""
        if self._up_at is not None:
            return self._up_at
        return self._first[0] if self._first else None

    def eta(self, now: float, live_rows: int, handled: int) -> float | None:
        since = self._rate_since()
        if self.rows_total and since is not None and 0 < live_rows < self.rows_total and now - since >= 1:
            rate = live_rows / (now - since)
            return (self.rows_total - live_rows) / rate if rate > 0 else None
        if not self.rows_total and self._first is not None and 0 < handled < self.total:
            since = now - self._first[0]
            rate = handled / since if since > 0 else 0
            return (self.total - handled) / rate if rate > 0 else None
        return None

    def print(self) -> None:
        """The final line (unless it would repeat the last one's counts)."""
        with self.lock:
            if self._printed != self._state():
                self.tick(force=True)
