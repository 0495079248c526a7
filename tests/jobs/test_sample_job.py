"""The sample and label jobs on a real local Ray with a real tiny model: artefacts, counts, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, write_samples
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

K = 3
FAST = {"max_tokens": 48, "batch_size": 4, "temperature": 1.0}


def read_dir(d: Path) -> pa.Table:
    parts = sorted(d.glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(p) for p in parts]) if parts else None


def run_then_kill(cmd: list[str], shard_dir: Path, shards: int = 2) -> dict:
    """Start a job in its own session, SIGKILL it once ``shards`` shards exist; the env to re-run with."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(shard_dir.glob("part-*.parquet"))) < shards:
        time.sleep(0.2)
    assert proc.poll() is None, "the job finished (or failed) before it could be killed"
    kill_run(proc)
    return env


def kill_run(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and the local Ray daemons it started (its process group), then wait until
    every process of its session is gone (workers may finish their in-flight batch first), as a
    user re-running after a crash would."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:
        out = subprocess.run(["ps", "-eo", "sid=,stat="], capture_output=True, text=True).stdout.split("\n")
        alive = [l for l in out if l.split() and l.split()[0] == str(proc.pid) and not l.split()[1].startswith("Z")]
        if not alive:
            return
        time.sleep(0.5)
    raise AssertionError("processes of the killed run are still alive after 60 s")


def bad_rows() -> list[dict]:
    return [
        {"id": "bad-empty", "context": [{"role": "user", "content": "q"}], "responses": [], "labels": []},
        {"id": "bad-labels", "context": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "labels": [1.0]},
        {"id": "bad-tie", "context": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "labels": [1.0, 1.0]},
        {"id": "bad-null", "context": [{"role": "user", "content": "q"}], "responses": ["a", None], "labels": [1.0, 0.0]},
    ]


@pytest.fixture
def samples(tmp_path) -> Path:
    return write_samples(tmp_path / "in" / "samples.parquet", make_rows(10) + bad_rows())


def test_sample_job_artefacts_counts_and_manifest(ray_local, tiny_model, samples, tmp_path):
    from tribunal.jobs.sample import SampleConfig, run

    out = tmp_path / "traj"
    manifest = run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=K, seed=1, **FAST))
    t = read_dir(out)
    assert t.schema.equals(arrow.TRAJECTORY)
    assert t.num_rows == 10 * K
    keys = set(zip(t[c.ID].to_pylist(), t[c.SAMPLE_INDEX].to_pylist(), t[c.HINTED].to_pylist()))
    assert len(keys) == t.num_rows  # every key exactly once
    assert {i for i, _, _ in keys} == {f"s{i:04d}" for i in range(10)}
    for row in t.to_pylist():
        assert sorted(row[c.PERMUTATION]) == list(range(row[c.N_RESPONSES]))
        assert (row[c.SCORES] is None) == (row[c.PARSE_ERROR] is not None)
        assert row[c.PARSE_ERROR] in (None, *arrow.PARSE_ERRORS)
        assert row[c.CORRECT] is not None  # all valid samples are labelled
        if row[c.SCORES] is None:
            assert row[c.CORRECT] is False
        assert row[c.PROMPT_TOKENS] > 100 and 0 < row[c.COMPLETION_TOKENS] <= FAST["max_tokens"] + 1
    q = read_dir(out / "_quarantine")
    assert q.schema.equals(arrow.QUARANTINE)
    assert dict(zip(q[c.ID].to_pylist(), q[c.REASON].to_pylist())) == {
        "bad-empty": "no_responses", "bad-labels": "label_count_mismatch", "bad-tie": "labels_no_unique_max", "bad-null": "null_text",
    }
    assert all(r.endswith("samples.parquet") for r in q[c.SOURCE_PATH].to_pylist())
    assert json.loads(q[c.RAW][0].as_py())["id"].startswith("bad-")
    counts = manifest["counts"]
    assert counts["rows_in"] == 14 and counts["samples_out"] == 10 and counts["quarantined"] == 4 and counts["reconciled"]
    assert counts["trajectories"] == 10 * K
    assert counts["parse_failures"] == sum(1 for e in t[c.PARSE_ERROR].to_pylist() if e)
    assert counts["correct"] == sum(1 for x in t[c.CORRECT].to_pylist() if x)
    on_disk = json.loads((out / "_manifest.json").read_text())
    assert on_disk["counts"] == counts and on_disk["config"]["k"] == K and "ray" in on_disk["versions"]

    # Same settings again: nothing left to do, output unchanged (resume of a finished run).
    before = sorted(p.name for p in out.glob("part-*.parquet"))
    again = run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=K, seed=1, **FAST))
    assert again["this_run"]["samples"] == 0 and again["this_run"]["resumed_from"] == 14
    assert sorted(p.name for p in out.glob("part-*.parquet")) == before

    # Deterministic: a fresh run with the same seed writes the same trajectories.
    out2 = tmp_path / "traj2"
    run(SampleConfig(input=str(samples), output=str(out2), model=tiny_model, k=K, seed=1, **{**FAST, "batch_size": 3}))
    a = read_dir(out).sort_by([(c.ID, "ascending"), (c.SAMPLE_INDEX, "ascending")])
    b = read_dir(out2).sort_by([(c.ID, "ascending"), (c.SAMPLE_INDEX, "ascending")])
    assert a[c.TEXT].to_pylist() == b[c.TEXT].to_pylist()


def test_other_settings_on_same_output_are_refused(ray_local, tiny_model, samples, tmp_path):
    from tribunal.jobs.sample import SampleConfig, run
    from tribunal.schemas.errors import TribunalError

    out = tmp_path / "traj"
    run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=1, **FAST))
    with pytest.raises(TribunalError, match="holds a run with k=1"):
        run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=2, **FAST))


def test_label_job_votes(ray_local, tiny_model, samples, tmp_path):
    from tribunal.jobs.label import LabelConfig, run

    result = run(LabelConfig(input=str(samples), output=str(tmp_path / "out"), model=tiny_model, k=K, tie="half", **FAST))
    votes = read_dir(tmp_path / "out" / "votes")
    assert votes.schema.equals(arrow.VOTE) and votes.num_rows == 10
    assert set(votes[c.K].to_pylist()) == {K}
    traj = read_dir(tmp_path / "out" / "trajectories")
    valid = sum(1 for s in traj[c.SCORES].to_pylist() if s is not None)
    assert sum(votes[c.VALID].to_pylist()) == valid
    assert result["vote"]["counts"]["parse_failure_rate"] == pytest.approx(1 - valid / (10 * K))
    assert all(cr in (0.0, 0.5, 1.0) for cr in votes[c.CREDIT].to_pylist())


def test_s3_round_trip(ray_local, tiny_model, s3_server, tmp_path):
    import s3fs

    from tribunal.jobs.label import LabelConfig, run

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    fs.mkdir("tribunal-test")
    local = write_samples(tmp_path / "samples.parquet", make_rows(4) + bad_rows()[:1])
    fs.put(str(local), "tribunal-test/in/samples.parquet")
    run(LabelConfig(input="s3://tribunal-test/in/", output="s3://tribunal-test/out", model=tiny_model, k=2, **FAST))
    fs.invalidate_cache()
    parts = fs.glob("tribunal-test/out/trajectories/part-*.parquet")
    assert parts
    t = pa.concat_tables([pq.read_table(fs.open(p, "rb")) for p in parts])
    assert t.schema.equals(arrow.TRAJECTORY) and t.num_rows == 8
    assert fs.glob("tribunal-test/out/trajectories/_quarantine/part-*.parquet")
    manifest = json.loads(fs.cat("tribunal-test/out/trajectories/_manifest.json"))
    assert manifest["counts"]["reconciled"] and manifest["output"] == "s3://tribunal-test/out/trajectories"
    votes = pq.read_table(fs.open(fs.glob("tribunal-test/out/votes/part-*.parquet")[0], "rb"))
    assert votes.num_rows == 4


def test_template_that_cannot_take_n_quarantines_the_sample(ray_local, tiny_model, tmp_path):
    from tribunal.jobs.sample import SampleConfig, run

    rows = make_rows(2) + make_rows(1, n=3, prefix="three")
    samples = write_samples(tmp_path / "s.parquet", rows)
    out = tmp_path / "o"
    manifest = run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, k=1, template="rm_r1_pairwise", **FAST))
    assert manifest["counts"]["quarantine_reasons"] == {"unsupported_n": 1}
    assert manifest["counts"]["samples_out"] == 2 and manifest["counts"]["reconciled"]
    q = read_dir(out / "_quarantine")
    assert q[c.ID].to_pylist() == ["three0000"] and "3 responses" in q[c.DETAIL][0].as_py()


def test_label_with_every_row_quarantined_ends_cleanly(ray_local, tiny_model, tmp_path):
    from tribunal.jobs.label import LabelConfig, run

    samples = write_samples(tmp_path / "s.parquet", bad_rows())
    result = run(LabelConfig(input=str(samples), output=str(tmp_path / "o"), model=tiny_model, k=1, **FAST))
    assert result["vote"] is None
    counts = result["sample"]["counts"]
    assert counts["samples_out"] == 0 and counts["quarantined"] == 4 and counts["reconciled"]
