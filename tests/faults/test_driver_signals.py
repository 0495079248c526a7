"""The driver killed (SIGKILL at five points of a run), terminated (SIGTERM) and interrupted (SIGINT,
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
            "--k", "1", "--batch-size", "2", "--max-tokens", "24", "--num-cpus-per-actor", "0.5"]


def _parts(out) -> int:
    return len(OutputDir(str(out)).parts())


def test_sigkill_at_five_points_then_every_key_once(tiny_model, tmp_path):
    n = 40
    rows = make_rows(n)
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    cmd = _cmd(tiny_model, samples, out)
    points = [
        ("starting", lambda job: time.sleep(0.5) or True),  # Python and Ray still starting up
        ("prepared", lambda job: job.saw("already done")),  # output prepared, Ray up, nothing generated
        ("engines loading", lambda job: job.saw("loading") and (time.sleep(0.5) or True)),
        ("first shard", lambda job, base=None: _parts(out) >= 1),
        ("mid-run", lambda job: _parts(out) >= 4),
    ]
    done_before = []
    for name, cond in points:
        job = Job(cmd, ROOT)
        assert job.wait_for(lambda: cond(job)), f"{name}: the run ended before the kill: {job.lines[-3:]}"
        job.sigkill()
        done_before.append(len(OutputDir(str(out)).done_ids()) if (out / "_run.json").exists() else 0)
    assert done_before[-1] < n, "the run finished before its last kill"
    rerun = Job(cmd, ROOT)
    assert rerun.finish() == 0, "\n".join(rerun.lines[-20:])
    check_output(str(out), [r["id"] for r in rows], k=1)
    assert not temporaries(out)


@pytest.mark.parametrize("sig,code,word", [("SIGTERM", 143, "terminated (SIGTERM)"), ("SIGINT", 130, "interrupted")])
def test_signal_stops_the_driver_then_the_rerun_resumes(sig, code, word, tiny_model, tmp_path):
    import signal

    rows = make_rows(24)
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "out"
    cmd = _cmd(tiny_model, samples, out)
    job = Job(cmd, ROOT)
    assert job.wait_for(lambda: _parts(out) >= 1), job.lines[-5:]
    t0 = time.monotonic()
    job.proc.send_signal(getattr(signal, sig))
    rc = job.finish(timeout=60)
    stopped_s = time.monotonic() - t0
    assert rc == code, job.lines[-10:]
    assert job.lines[-1] == f"tribunal sample: {word}; re-run the same command to resume", job.lines[-5:]
    assert stopped_s < 20, f"took {stopped_s:.1f}s to stop"
    wait_session_gone(job.proc.pid)  # the embedded Ray went with it
    assert not temporaries(out)
    kept = len(OutputDir(str(out)).done_ids())
    assert 0 < kept < len(rows)
    rerun = Job(cmd, ROOT)
    assert rerun.finish() == 0, rerun.lines[-20:]
    assert rerun.saw(f"{kept} already done")
    check_output(str(out), [r["id"] for r in rows], k=1)
