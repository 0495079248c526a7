"""What every fault test checks: the written Parquet, read the one way outputs are read."""

from __future__ import annotations

from collections import Counter

from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.schemas import columns as c


def check_output(out: str, ids_in: list[str], k: int, quarantined: dict[str, str] | None = None) -> dict:
    """0 lost, 0 duplicated keys, counts reconcile: every input id is either in the output with
    its k trajectories exactly once, or in the quarantine once with the expected reason."""
    quarantined = quarantined or {}
    d = OutputDir(out)
    parts = d.parts()
    t = d.read(parts, [c.ID, c.SAMPLE_INDEX, c.HINTED]) if parts else None
    keys = list(zip(t[c.ID].to_pylist(), t[c.SAMPLE_INDEX].to_pylist(), t[c.HINTED].to_pylist())) if t is not None else []
    dup = [k_ for k_, n in Counter(keys).items() if n > 1]
    assert not dup, f"duplicated keys: {dup[:5]}"
    per_id = Counter(i for i, _, _ in keys)
    q = d.read(d.quarantine_parts(), [c.ID, c.REASON, c.DETAIL]) if d.quarantine_parts() else None
    q_rows = list(zip(q[c.ID].to_pylist(), q[c.REASON].to_pylist(), q[c.DETAIL].to_pylist())) if q is not None else []
    q_ids = Counter(i for i, _, _ in q_rows)
    assert all(n == 1 for n in q_ids.values()), f"quarantined twice: {q_ids}"
    assert {i: r for i, r, _ in q_rows} == quarantined
    for i in ids_in:
        if i in quarantined:
            assert i not in per_id, f"{i} is both quarantined and in the output"
        else:
            assert per_id.get(i) == k, f"{i}: {per_id.get(i)} trajectories, expected {k}"
    assert set(per_id) | set(q_ids) == set(ids_in), "keys that were never in the input"
    return {"details": {i: det for i, _, det in q_rows}}


# ---------------------------------------------------------------- driver processes
import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402


class Job:
    """A ``tribunal`` command in its own session, its stderr collected line by line."""

    def __init__(self, cmd: list[str], cwd, env: dict | None = None):
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, cond, timeout: float = 240) -> bool:
        """Poll ``cond()`` until true; False if the job ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return True
            if self.proc.poll() is not None:
                return False
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting; stderr: {self.lines[-5:]}")

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def finish(self, timeout: float = 400) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return rc

    def sigkill(self) -> None:
        """SIGKILL the driver and the local Ray daemons it started (its session), then wait until
        every process of the session is gone, as a user re-running after a crash would."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        wait_session_gone(self.proc.pid, kill=True)


def wait_session_gone(sid: int, timeout: float = 60, kill: bool = False) -> None:
    """Wait until no process of session ``sid`` is alive; ``kill``: SIGKILL them too (a Ray daemon
    can leave the driver's process group but not its session)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["ps", "-eo", "pid=,sid=,stat="], capture_output=True, text=True).stdout.split("\n")
        alive = [l.split() for l in out if len(l.split()) == 3 and l.split()[1] == str(sid) and not l.split()[2].startswith("Z")]
        if not alive:
            return
        if kill:
            for pid, _, _ in alive:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
        time.sleep(0.3)
    raise AssertionError(f"processes of session {sid} are still alive after {timeout} s")


def temporaries(root) -> list[str]:
    from pathlib import Path

    return [str(p) for p in Path(root).rglob(".tmp-*")]
