"""Hostile inputs (``tests/fuzz_inputs.py``) through the real jobs on a real local Ray: ``label``
(sample + vote), ``rft`` (sample + the rft-filter reducer) and ``vote`` on its own. 0 crashes,
every bad row quarantined with a known reason, counts reconcile, every key once.

Cases with the same schema go to one input directory (one file per case: duplicate ids across
files, zero-row files and extra columns included), so a job run covers several cases."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fuzz_inputs import hostile_table, wrong_type_table
from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

pytestmark = pytest.mark.slow

FAST = {"k": 1, "max_tokens": 8, "batch_size": 8, "temperature": 1.0, "num_cpus_per_actor": 0.5}
REASONS = set(arrow.QUARANTINE_REASONS) | set(arrow.STAGE_QUARANTINE_REASONS)


@pytest.fixture(scope="module")
def ray_once():
    """One embedded Ray for the module (jobs attach to the one already running)."""
    import ray

    from tribunal.cluster.ray_cluster import connect

    was_running = ray.is_initialized()
    connect(None, num_cpus=2)
    yield
    if not was_running:
        ray.shutdown()


def case_dirs(root: Path, seeds, groups: int = 3, per_group: int = 10) -> list[tuple[Path, list]]:
    """Hostile tables of ``seeds``, one file each, in the ``groups`` most common schemas (strings
    or raw bytes, string or integer ids, extra columns ...), ``per_group`` cases a directory:
    [(dir, seeds)]. One job run per directory keeps Ray's per-run cost to a few runs."""
    by_schema: dict[str, list] = defaultdict(list)
    for seed in seeds:
        t = hostile_table(seed)
        by_schema[str(t.schema)].append((seed, t))
    chosen = sorted(by_schema.values(), key=len, reverse=True)[:groups]
    out = []
    for i, members in enumerate(chosen):
        d = root / f"group{i}"
        d.mkdir(parents=True)
        for seed, t in members[:per_group]:
            pq.write_table(t, d / f"case{seed:04d}.parquet")
        out.append((d, [s for s, _ in members[:per_group]]))
    return out


def _rows_in(d: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in d.glob("*.parquet"))


def _check_sample_output(out: str, rows_in: int) -> tuple[int, int]:
    d = OutputDir(out)
    manifest = json.loads(Path(out, "_manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["rows_in"] == rows_in
    assert counts["reconciled"] and counts["duplicate_keys"] == 0, counts
    assert set(counts["quarantine_reasons"]) <= REASONS, counts["quarantine_reasons"]
    if d.quarantine_parts():
        q = d.read(d.quarantine_parts(), [c.ID, c.REASON, c.RAW])
        assert all(q[c.REASON].to_pylist()) and all(q[c.RAW].to_pylist()) and all(q[c.ID].to_pylist())
        # one quarantine row per bad input row (a duplicated id is quarantined on each of its rows)
        assert q.num_rows == counts["quarantined"]
        from collections import Counter

        assert dict(Counter(q[c.REASON].to_pylist())) == counts["quarantine_reasons"]
    return counts["samples_out"], counts["quarantined"]


def test_fuzzed_inputs_through_label(ray_once, tiny_model, tmp_path):
    from tribunal.jobs.label import LabelConfig, run

    total_in = total_out = total_q = 0
    reasons: set[str] = set()
    for d, seeds in case_dirs(tmp_path / "in", range(0, 200)):
        out = tmp_path / "out" / d.name
        result = run(LabelConfig(input=str(d), output=str(out), model=tiny_model, **FAST))
        rows_in = _rows_in(d)
        samples_out, quarantined = _check_sample_output(str(out / "trajectories"), rows_in)
        reasons |= set(result["sample"]["counts"]["quarantine_reasons"])
        if samples_out:
            votes = OutputDir(str(out / "votes"))
            v = votes.read(votes.parts(), [c.ID])
            assert v.num_rows == samples_out and len(set(v[c.ID].to_pylist())) == samples_out, seeds
        else:
            assert result["vote"] is None
        total_in, total_out, total_q = total_in + rows_in, total_out + samples_out, total_q + quarantined
    assert total_in == total_out + total_q
    assert total_out > 0 and total_q > 0  # good rows went through, bad rows were set aside
    assert {"bad_context", "no_responses", "duplicate_id"} <= reasons, reasons


def test_fuzzed_inputs_through_rft(ray_once, tiny_model, tmp_path):
    from tribunal.jobs.rft import RftConfig, run

    total_in = total_out = 0
    for d, seeds in case_dirs(tmp_path / "in", range(200, 400)):
        out = tmp_path / "out" / d.name
        result = run(RftConfig(input=str(d), output=str(out), model=tiny_model, **FAST))
        rows_in = _rows_in(d)
        samples_out, quarantined = _check_sample_output(str(out / "trajectories"), rows_in)
        if result.get("funnel") is not None or (out / "funnel.json").exists():
            funnel = json.loads((out / "funnel.json").read_text())
            assert funnel["reconciled"] and funnel["rows_in"] == rows_in, (seeds, funnel)
            assert funnel["outcomes"]["invalid"] == quarantined
        total_in, total_out = total_in + rows_in, total_out + samples_out
    assert total_out > 0


def test_vote_over_fuzzed_trajectories_is_idempotent(ray_once, tiny_model, tmp_path):
    """``vote`` on its own over the trajectories of hostile input, twice: same votes, no duplicates."""
    from tribunal.jobs.sample import SampleConfig, run as sample
    from tribunal.jobs.vote import VoteConfig, run as vote

    d, _ = case_dirs(tmp_path / "in", range(400, 440), groups=1, per_group=4)[0]
    traj = tmp_path / "traj"
    sample(SampleConfig(input=str(d), output=str(traj), model=tiny_model, **FAST))
    firsts = []
    for _ in range(2):
        vote(VoteConfig(input=str(traj), output=str(tmp_path / "votes"), k=1))
        v = OutputDir(str(tmp_path / "votes"))
        t = v.read(v.parts()).sort_by(c.ID)
        assert len(set(t[c.ID].to_pylist())) == t.num_rows
        firsts.append(t)
    assert firsts[0].equals(firsts[1])


@pytest.mark.parametrize("seed", range(5))
def test_wrong_type_inputs_fail_in_one_line_before_ray(seed, tiny_model, tmp_path, capsys):
    from tribunal.jobs.cli import run_main

    table, column = wrong_type_table(seed)
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    rc = run_main("label", ["--input", str(path), "--output", str(tmp_path / "o"), "--model", tiny_model])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert str(path) in err[0] and repr(column) in err[0], err[0]
