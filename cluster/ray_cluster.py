"""Connecting to Ray: a private embedded instance by default, or a running cluster by address.

- No address (no ``--address``, no ``RAY_ADDRESS``): ``ray.init(address="local")`` starts a Ray of
  our own on this machine, shut down with the process. It never attaches to a cluster some other
  program started here (a plain ``ray.init()`` would pick up the last ``ray start`` recorded in
  ``/tmp/ray``, and hang retrying it if that cluster has died).
- ``--address HOST:PORT`` / ``ray://HOST:PORT`` / ``RAY_ADDRESS`` (what ``ray job submit`` sets
  for its entrypoint): attach to that cluster. ``auto``: attach to the cluster ``ray start``
  recorded on this machine.
- Before attaching, the address is probed: a TCP connect, then one GCS call made by Ray's own
  client in a child process, each bounded by ``TRIBUNAL_RAY_CONNECT_TIMEOUT_S`` (default 10 s).
  An unreachable cluster, a port that is not a Ray GCS, or a refused token is a one-line error
  within that time, not Ray's retries and a screen of warnings, and Ctrl-C works while we wait.

A healthy run prints tribunal's own lines only; ``TRIBUNAL_DEBUG=1`` (what ``--debug`` sets) keeps
Ray's console output as Ray has it. Quiet, before Ray starts (each a setting of Ray's own, left
alone where the user set it):

- ``RAY_BACKEND_LOG_LEVEL=fatal`` while Ray starts: the C++ core worker of the driver writes
  error-level lines to the console, such as ``core_worker.cc: Actor ... has constructor arguments
  in the object store and max_restarts > 0 ...`` once Ray Data starts an actor pool (Ray Data
  passes every pool's function by reference and restarts actors: a note on Ray's restarts, not an
  error of the job). Ray announces the setting on the console before applying it ("Set ray log
  level from environment variable ..."): that one line is dropped (the rest of what the start
  prints passes through). An embedded Ray's own processes start with the setting too, so their
  session log files keep only fatal lines: ``--debug`` keeps everything;
- ``ray.init(log_to_driver=False)``: what workers and actors print (a failed task's traceback, an
  aborting engine's ``Fatal Python error`` and C++ frames, hundreds of lines) stays in their log
  files; the failure itself reaches the driver as an exception, which the CLI turns into one line.
  ``connect(worker_logs=True)`` forwards it (a caller whose progress is printed by workers);
- ``logging_level=CRITICAL`` for the driver's ``ray`` logger, ``RAY_IGNORE_UNHANDLED_ERRORS=1``
  (Ray's "Unhandled error" echo of a failed task the job has already reported), and Ray Data's
  console handler at CRITICAL (``ray_data_logging.yaml``: its INFO "Dataset ... execution
  finished" and its ERROR traceback of a failed operator; everything still goes to its session
  log file ``ray-data.log``), re-applied here because a job may import ``ray.data`` first.

Token authentication (Ray 2.60's default) stays on: the embedded instance creates or reuses
``~/.ray/auth_token``; to attach to a remote cluster the client needs its token, in
``RAY_AUTH_TOKEN`` or the file ``RAY_AUTH_TOKEN_PATH`` names (see cluster/README.md).
"""

from __future__ import annotations

import logging
import os
import socket
import time

from tribunal.cluster.redact import scrub_url
from tribunal.schemas.errors import TribunalError

DEBUG_ENV = "TRIBUNAL_DEBUG"
"""Set to 1 (the CLI's ``--debug`` does) to keep Ray's console output: logs, workers' output."""
RAY_DATA_LOGGING = os.path.join(os.path.dirname(__file__), "ray_data_logging.yaml")
CONNECT_TIMEOUT_ENV = "TRIBUNAL_RAY_CONNECT_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_GCS_PORT = 6379
DEFAULT_CLIENT_PORT = 10001


def _connect_timeout() -> float:
    raw = os.environ.get(CONNECT_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_CONNECT_TIMEOUT_S
    except ValueError:
        raise TribunalError(f"{CONNECT_TIMEOUT_ENV}={raw!r}: not a number of seconds") from None


def host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``, ``ray://HOST[:PORT]`` or ``http(s)://HOST[:PORT]``."""
    rest, default = address, DEFAULT_GCS_PORT
    if "://" in address:
        scheme, rest = address.split("://", 1)
        default = {"ray": DEFAULT_CLIENT_PORT, "http": 80, "https": 443}.get(scheme.lower(), DEFAULT_GCS_PORT)
    rest = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    if rest.startswith("["):  # [ipv6]:port
        host, _, port = rest[1:].partition("]")
        port = port.lstrip(":")
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host, port = rest, ""
    if not host:
        raise TribunalError(f"Ray address {scrub_url(address)!r}: no host (expected HOST:PORT or ray://HOST:PORT)")
    try:
        return host, int(port) if port else default
    except ValueError:
        raise TribunalError(f"Ray address {scrub_url(address)!r}: port {port!r} is not a number") from None


def resolve_address(address: str) -> str:
    """The address to attach to: ``auto`` becomes the cluster ``ray start`` recorded here."""
    if address != "auto":
        return address
    from ray._private import services

    found = services.find_bootstrap_address(None)
    if not found:
        raise TribunalError("--address auto: no Ray cluster was started on this machine (`ray start --head`); leave --address out for an embedded Ray")
    return found


def probe(address: str, timeout_s: float | None = None) -> None:
    """Raise a one-line TribunalError unless a TCP connection to ``address`` opens in time."""
    timeout_s = _connect_timeout() if timeout_s is None else timeout_s
    host, port = host_port(address)
    start = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as e:
        waited = time.monotonic() - start
        why = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) else (e.strerror or type(e).__name__)
        raise TribunalError(
            f"cannot reach the Ray cluster at {scrub_url(address)} ({host}:{port}: {why} after {waited:.1f}s); "
            "check --address / RAY_ADDRESS, or leave both out for an embedded Ray"
        ) from None


def _refresh_ray_config() -> None:
    """Make an already imported Ray re-read RAY_AUTH_MODE (what Ray itself does when it turns
    token authentication on)."""
    from ray._raylet import Config

    Config.initialize("")


_GCS_CHECK = """
import sys
from ray._raylet import GcsClient
client = GcsClient(address=sys.argv[1])
client.internal_kv_get(b"tribunal-probe", None, timeout=float(sys.argv[2]))  # also proves the token
"""


def probe_gcs(address: str, timeout_s: float | None = None) -> None:
    """Raise a one-line TribunalError unless a Ray GCS answers at ``HOST:PORT`` in time.

    A port that accepts TCP but is not a Ray GCS (another service, a proxy, a restarted host)
    costs Ray's own client ~20 s of retries and a screen of warnings, none of which a setting
    shortens, in C++ code that Ctrl-C cannot interrupt. So the first contact is made by Ray's own
    GCS client in a child process that we can stop: an answer in time, or an error.
    """
    import subprocess
    import sys

    timeout_s = _connect_timeout() if timeout_s is None else timeout_s
    env = {**os.environ, "RAY_BACKEND_LOG_LEVEL": "fatal"}
    try:
        r = subprocess.run(
            [sys.executable, "-c", _GCS_CHECK, address, str(timeout_s)],
            env=env, capture_output=True, text=True, timeout=timeout_s + 15,  # + the child's imports
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise TribunalError(f"no Ray cluster answered at {scrub_url(address)} within {timeout_s:.0f}s; check --address / RAY_ADDRESS") from None
    if r.returncode != 0:
        lines = [l.strip() for l in r.stderr.splitlines() if l.strip() and not l.startswith((" ", "Traceback"))]
        last = lines[-1] if lines else f"exit code {r.returncode}"
        hint = ""
        if "auth" in last.lower() or "token" in last.lower():
            hint = "; set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token (see cluster/README.md)"
        raise TribunalError(f"no Ray cluster answers at {scrub_url(address)}: {last[:300]}{hint}")


def debug_enabled() -> bool:
    """Whether the user asked for Ray's own console output (``TRIBUNAL_DEBUG``, set by ``--debug``)."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def quiet_ray_settings(quiet: bool) -> None:
    """Ray's console settings, set in the environment before Ray starts (see the module doc)."""
    if quiet:
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
        os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", RAY_DATA_LOGGING)
    elif os.environ.get("RAY_DATA_LOGGING_CONFIG") == RAY_DATA_LOGGING:  # ours, from a quiet call before
        del os.environ["RAY_DATA_LOGGING_CONFIG"]
    import sys

    if "ray.data" in sys.modules:  # imported before us: its logger was configured from the old setting
        from ray.data._internal.logging import configure_logging

        configure_logging()


def connect(address: str | None = None, *, num_cpus: int | None = None, quiet: bool = True, worker_logs: bool = False) -> str:
    """Start our own Ray or attach to a cluster; return a short description of where we run.

    ``address`` (else ``RAY_ADDRESS``) attaches; without either, a private local Ray starts
    (``num_cpus`` sizes it). Calling it again in the same process reuses the session.
    ``quiet`` (unless ``TRIBUNAL_DEBUG`` is set): Ray prints nothing on the console but fatal
    errors; ``worker_logs`` still forwards what workers print (it takes effect when Ray starts).
    """
    quiet = quiet and not debug_enabled()
    quiet_ray_settings(quiet)
    import ray
    import ray.data
    from ray.util.debug import log_once

    address = address or os.environ.get("RAY_ADDRESS") or None
    if not ray.is_initialized():
        with _keep_sigterm():
            _init(ray, address, num_cpus, quiet, worker_logs=worker_logs or not quiet)
    if quiet:
        log_once("ray_data_progress_manager_disabled")  # we disable the bars on purpose: no warning
    ctx = ray.data.DataContext.get_current()
    # Our own progress line replaces Ray's bars, which flood non-interactive logs.
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    from tribunal.cluster.pools import fault_policy

    fault_policy().apply(ctx)  # retries, restarts and the stall guard, on purpose (see FaultPolicy)
    res = ray.cluster_resources()
    where = scrub_url(address) if address else "embedded local Ray"
    return f"{where} ({int(res.get('CPU', 0))} CPU, {int(res.get('GPU', 0))} GPU)"


class _keep_sigterm:
    """Keep the process's own SIGTERM handler across ``ray.init``, which installs Ray's (the
    driver's core worker logs the signal and aborts: exit status 134, no clean-up). The CLI's
    handler stops the job with one line and status 143 (see ``jobs/cli.py``)."""

    def __enter__(self):
        import signal
        import threading

        self._main = threading.current_thread() is threading.main_thread()
        self._handler = signal.getsignal(signal.SIGTERM) if self._main else None
        return self

    def __exit__(self, *exc):
        import signal

        if self._main and self._handler is not None:
            signal.signal(signal.SIGTERM, self._handler)
        return False


class _quiet_start:
    """While Ray starts (quiet): ``RAY_BACKEND_LOG_LEVEL=fatal`` (unless the user set a level),
    and the driver's file descriptor 2 goes to a temporary file, replayed to the console afterwards
    without Ray's announcement of the setting. Ray's own processes write to their log files, not
    to this descriptor, so nothing of theirs is held back."""

    ANNOUNCEMENT = "Set ray log level from environment variable RAY_BACKEND_LOG_LEVEL"

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        if not self.quiet:
            return self
        import sys
        import tempfile

        self.set_level = "RAY_BACKEND_LOG_LEVEL" not in os.environ
        if self.set_level:
            os.environ["RAY_BACKEND_LOG_LEVEL"] = "fatal"
        sys.stderr.flush()
        self.held = tempfile.TemporaryFile()
        self.saved = os.dup(2)
        os.dup2(self.held.fileno(), 2)
        return self

    def __exit__(self, *exc):
        if not self.quiet:
            return False
        import sys

        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        if self.set_level:  # Ray read it at start; later processes of ours (torchrun ...) keep their default
            os.environ.pop("RAY_BACKEND_LOG_LEVEL", None)
        self.held.seek(0)
        text = self.held.read().decode("utf-8", "replace")
        self.held.close()
        kept = "".join(line for line in text.splitlines(keepends=True) if self.ANNOUNCEMENT not in line)
        if kept:
            os.write(2, kept.encode())
        return False


def _init(ray, address: str | None, num_cpus: int | None, quiet: bool, worker_logs: bool = True) -> None:
    kwargs: dict = {"include_dashboard": False, "log_to_driver": worker_logs}
    if quiet:
        kwargs["logging_level"] = logging.CRITICAL
    if address:
        target = resolve_address(address)
        probe(target)
        if "://" not in target and not os.environ.get("RAY_USE_TLS", "").strip() in ("1", "true"):
            probe_gcs(target)
        try:
            with _quiet_start(quiet):
                ray.init(address=target, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TribunalError(f"cannot attach to the Ray cluster at {scrub_url(target)}: {first}") from None
    else:
        # "local": always a new instance of our own, whatever /tmp/ray or RAY_ADDRESS says.
        # Token authentication is Ray's default for a new instance; saying so explicitly
        # keeps it on and drops Ray's start-up warning that it is on (a user's own
        # RAY_AUTH_MODE, "disabled" included, is respected).
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        _refresh_ray_config()
        with _quiet_start(quiet):
            ray.init(address="local", num_cpus=num_cpus, **kwargs)
