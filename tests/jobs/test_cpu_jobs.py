"""Every CPU job (vote, eval, filter, rft-filter, export, import, compact) starts, reports and
refuses the same way: one manifest layout whose counts reconcile, the same done and output lines,
a re-run with other settings refused unless --overwrite, and --overwrite never touching a
directory tribunal did not write."""

from __future__ import annotations

import io
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from test_vote import synthetic_trajectories
from tribunal.jobs import compact, export, filter as filter_job, import_, rft_filter, vote
from tribunal.jobs import eval as eval_job
from tribunal.jobs.demo import synthetic_rollouts
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

MANIFEST_KEYS = {"job", "kind", "schema", "config", "settings", "versions", "output", "units", "counts", "this_run",
                 "timings_s", "throughput", "storage", "run"}
COUNT_KEYS = {"rows_in", "rows_out", "quarantined", "quarantine_reasons", "dropped", "duplicate_keys", "reconciled"}


def trajectories(root: Path) -> Path:
    """Labelled trajectories (with ``correct``, as rft-filter needs them) in two shards."""
    rows = synthetic_trajectories(60, 4, seed=5)
    rng = random.Random(1)
    for r in rows:
        r[c.CORRECT] = r[c.SCORES] is not None and rng.random() < 0.6
    d = root / "traj"
    d.mkdir(parents=True)
    ids = sorted({r[c.ID] for r in rows})
    for i, part in enumerate((set(ids[:30]), set(ids[30:]))):
        pq.write_table(pa.Table.from_pylist([r for r in rows if r[c.ID] in part], schema=arrow.TRAJECTORY), d / f"part-{i}.parquet")
    return d


def rollouts(root: Path) -> Path:
    d = root / "scored"
    d.mkdir(parents=True)
    pq.write_table(synthetic_rollouts(60, per_prompt=4, seed=3), d / "part-0.parquet")
    return d


def benchmark(root: Path) -> Path:
    recs = [{"prompt": f"q{i}", "chosen": "a", "rejected": "b", "subset": "alpacaeval-easy", "id": f"i{i}"} for i in range(5)]
    recs.append({"prompt": "bad", "chosen": None, "rejected": "x", "subset": "alpacaeval-easy", "id": "bad"})
    root.mkdir(parents=True, exist_ok=True)
    (root / "rb.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    return root / "rb.jsonl"


# job -> (module, its config class, a builder of its input, the options of a healthy run, a setting a
# second run changes, where its manifests are)
JOBS = {
    "vote": (vote, vote.VoteConfig, trajectories, {"k": 2}, {"k": 3}, ["_manifest.json"]),
    "eval": (eval_job, eval_job.EvalConfig, trajectories, {"bootstrap": 0}, {"ks": "1,2"}, ["_manifest.json"]),
    "filter": (filter_job, filter_job.FilterConfig, rollouts, {"step_prompts": 8}, {"std_beta": 0.7}, ["_manifest.json"]),
    "rft-filter": (rft_filter, rft_filter.RftFilterConfig, trajectories, {"template": "default"}, {"hint": "never"},
                   ["sft/_manifest.json", "metarm/_manifest.json"]),
    "export": (export, export.ExportConfig, rollouts, {"format": "openrlhf-dpo"}, {"format": "verl"}, ["_manifest.json"]),
    "import": (import_, import_.ImportConfig, benchmark, {}, {"source": "rb"}, ["_manifest.json"]),
}


def run_job(name: str, inp, out, stream=None, **options) -> dict:
    module, config, _, healthy, _, _ = JOBS[name]
    return module.run(config(input=str(inp), output=str(out), **{**healthy, **options}), stream=stream or io.StringIO())


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", [*JOBS, "compact"])
def test_every_cpu_job_reports_with_the_common_manifest_and_lines(tmp_path, name):
    err = io.StringIO()
    out = tmp_path / "out"
    if name == "compact":  # a vote output (two shards) compacted in place
        run_job("vote", trajectories(tmp_path / "in"), out, chunk_rows=100)
        assert len(list(out.glob("part-*.parquet"))) == 2
        compact.run(compact.CompactConfig(input=str(out)), stream=err)
        manifests = ["_compact.json"]
        assert json.loads((out / "_manifest.json").read_text())["job"] == "vote"  # the writer's manifest stays
    else:
        run_job(name, JOBS[name][2](tmp_path / "in"), out, stream=err)
        manifests = JOBS[name][5]
    for where in manifests:
        m = json.loads((out / where).read_text())
        assert MANIFEST_KEYS <= set(m), (where, MANIFEST_KEYS - set(m))
        assert COUNT_KEYS <= set(m["counts"]), (where, COUNT_KEYS - set(m["counts"]))
        counts = m["counts"]
        assert counts["reconciled"] is True and counts["duplicate_keys"] == 0, (where, counts)
        assert counts["rows_in"] == counts["rows_out"] + counts["quarantined"] + sum(counts["dropped"].values()) > 0
        assert m["job"] == name and m["units"]["input"]
    lines = err.getvalue().splitlines()
    done = [line for line in lines if line.startswith(f"[{name}] done in ")]
    assert len(done) == 1 and done[0].endswith("; counts reconcile"), lines
    assert lines[-1].startswith(f"[{name}] output: ") and "(manifest: " in lines[-1], lines
    assert not any("WARNING" in line or "DO NOT" in line for line in lines), lines
    assert not (out / "_lease.json").exists()  # the run's hold on its output ended with it


@pytest.mark.parametrize("name", list(JOBS))
def test_other_settings_are_refused_and_overwrite_replaces(tmp_path, name):
    _, _, make_input, _, other, manifests = JOBS[name]
    inp, out = make_input(tmp_path / "in"), tmp_path / "out"
    run_job(name, inp, out)
    run_job(name, inp, out)  # the same settings again: recomputed
    key = next(iter(other))
    with pytest.raises(TribunalError, match=rf"holds a run with {key}=.*, this one has {key}=.*--overwrite"):
        run_job(name, inp, out, **other)
    run_job(name, inp, out, overwrite=True, **other)
    m = json.loads((out / manifests[0]).read_text())
    assert m["settings"][key] == other[key] and m["counts"]["reconciled"]


@pytest.mark.parametrize("name", list(JOBS))
def test_overwrite_never_touches_a_directory_tribunal_did_not_write(tmp_path, name):
    inp = JOBS[name][2](tmp_path / "in")
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "keep.txt").write_bytes(os.urandom(64))
    before = snapshot(mine)
    with pytest.raises(TribunalError, match=r"--output .*mine.*(did not write|not an rft run's).*use another --output"):
        run_job(name, inp, mine, overwrite=True)
    assert snapshot(mine) == before and {p.name for p in mine.rglob("*")} == {"sub", "notes.txt", "keep.txt"}
    # ... nor a file, nor the input itself
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(TribunalError, match="is a file"):
        run_job(name, inp, tmp_path / "file.txt", overwrite=True)
    assert (tmp_path / "file.txt").read_text() == "x"
    if inp.is_dir():
        held = snapshot(inp)
        with pytest.raises(TribunalError, match="is the input"):
            run_job(name, inp, inp, overwrite=True)
        assert snapshot(inp) == held


def test_rft_filter_overwrite_replaces_the_corpora_and_keeps_the_trajectories(tmp_path):
    run_dir = tmp_path / "rft_run"
    traj = trajectories(run_dir).rename(run_dir / "trajectories")  # rft's layout: the trajectories inside the run directory
    held = snapshot(traj)
    first = run_job("rft-filter", traj, run_dir)
    with pytest.raises(TribunalError, match="hint"):
        run_job("rft-filter", traj, run_dir, hint="never")
    again = run_job("rft-filter", traj, run_dir, hint="never", overwrite=True)
    assert snapshot(traj) == held
    assert again["funnel"]["hint"] == "never" and again["funnel"]["reconciled"] and first["funnel"]["reconciled"]
    assert json.loads((run_dir / "funnel.json").read_text()) == again["funnel"]


def test_compact_refuses_an_output_a_live_run_holds(tmp_path):
    out = tmp_path / "votes"
    run_job("vote", trajectories(tmp_path / "in"), out, chunk_rows=100)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        now = time.time()
        (out / "_lease.json").write_text(json.dumps({"host": platform.node(), "pid": writer.pid, "id": "x", "started": now, "beat": now}))
        held = snapshot(out)
        with pytest.raises(TribunalError, match="being written by another run"):
            compact.run(compact.CompactConfig(input=str(out)), stream=io.StringIO())
        assert snapshot(out) == held
    finally:
        writer.kill()
        writer.wait()
    compact.run(compact.CompactConfig(input=str(out)), stream=io.StringIO())  # a dead run's lease holds nothing
    assert len(list(out.glob("part-*.parquet"))) == 1


def test_a_rerun_from_the_working_directory_is_the_same_run(tmp_path, monkeypatch):
    """Relative and absolute paths name one run, also when the working directory is long enough
    to be scrubbed from records as `$PWD` (a recorded `<redacted>/traj` is not resolved again)."""
    work = tmp_path / "a-long-working-directory"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("PWD", str(work))
    trajectories(work)
    for inp in ("traj", str(work / "traj"), "traj"):
        m = run_job("vote", inp, "votes")
        assert m["counts"]["reconciled"]
    with pytest.raises(TribunalError, match="holds a run with k=2, this one has k=3"):
        run_job("vote", "traj", "votes", k=3)
