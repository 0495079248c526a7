"""The driver killed (SIGKILL at four points of a run), terminated (SIGTERM) and interrupted (SIGINT,
Ctrl-C's signal): a subprocess running the real CLI on a real embedded Ray; every re-run resumes,
and the final output holds every key once."""

from __future__ import annotations

import sys
import time

import pytest

from conftest import ROOT, make_rows, write_samples
from helpers import Job, check_output, temporaries, wait_session_gone
from tribunal.jobs.pipeline.outputs import OutputDir

pytestmark = pytest.mark.slow


def _cmd(tiny_model, samples, out) -> list[str]:
    return [sys.executable, "-m", "tribunal.jobs.sample", "--input", str(samples), "--output", str(out), "--model", tiny_model,
            "--k", "1", "--batch-size", "2", "--max-tokens", "24", "--num-cpus-per-actor", "0.5",
            # A tiny target: the driver merges committed batch files while the run goes, so a kill
            # may land in a merge too.
            "--target-file-mb", "0.001"]


def _done(out) -> int:
    """Samples the committed output holds (read as every reader reads it)."""
    if not (out / "_run.json").exists():
        return 0
    try:
        return len(OutputDir(str(out)).done_ids())
    except (FileNotFoundError, OSError):  # a file published while we listed
        return 0


def test_sigkill_at_four_points_then_every_key_once(tiny_model, tmp_path):
    n = 24
    rows = make_rows(n)
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    cmd = _cmd(tiny_model, samples, out)
    points = [
        ("starting", lambda job: time.sleep(0.5) or True),  # Python and Ray still starting up
        ("engines loading", lambda job: job.saw("loading") and (time.sleep(0.5) or True)),
        ("first shard", lambda job: _done(out) >= 1),
        ("mid-run", lambda job: _done(out) >= 6),
    ]
    done_before = []
    for name, cond in points:
        job = Job(cmd, ROOT)
        assert job.wait_for(lambda: cond(job)), f"{name}: the run ended before the kill: {job.lines[-3:]}"
        job.sigkill()
        done_before.append(_done(out))
    assert done_before[-1] < n, "the run finished before its last kill"
    rerun = Job(cmd, ROOT)
    assert rerun.finish() == 0, "\n".join(rerun.lines[-20:])
    check_output(str(out), [r["id"] for r in rows], k=1)
    assert not temporaries(out)


def test_sigterm_then_sigint_stop_the_driver_and_each_rerun_resumes(tiny_model, tmp_path):
    """SIGTERM on a run, SIGINT (Ctrl-C) on its re-run, then a last run: each stop is quick, one
    line and its exit status, leaves no temporary file and no Ray process, and the next run resumes."""
    import signal

    rows = make_rows(30)
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    cmd = _cmd(tiny_model, samples, out)
    kept = 0
    for sig, code, word in [(signal.SIGTERM, 143, "terminated (SIGTERM)"), (signal.SIGINT, 130, "interrupted")]:
        job = Job(cmd, ROOT)
        assert job.wait_for(lambda: _done(out) > kept), job.lines[-5:]
        assert job.saw(f"{kept} already done"), job.lines  # resumed from what the last stop kept
        t0 = time.monotonic()
        job.proc.send_signal(sig)
        rc = job.finish(timeout=60)
        stopped_s = time.monotonic() - t0
        assert rc == code, job.lines[-10:]
        assert job.lines[-1] == f"tribunal sample: {word}; re-run the same command to resume", job.lines[-5:]
        assert stopped_s < 20, f"took {stopped_s:.1f}s to stop"
        wait_session_gone(job.proc.pid)  # the embedded Ray went with it
        assert not temporaries(out)
        now = len(OutputDir(str(out)).done_ids())
        assert kept < now < len(rows), (kept, now)
        kept = now
    rerun = Job(cmd, ROOT)
    assert rerun.finish() == 0, rerun.lines[-20:]
    assert rerun.saw(f"{kept} already done")
    check_output(str(out), [r["id"] for r in rows], k=1)
