"""Engine actors that die for real (``os._exit``) while starting or mid-batch, a row that makes the
generate stage raise, a prompt longer than the model's context, and a stalled job: on a real
local Ray with a real tiny model, each verified in the written Parquet."""

from __future__ import annotations

import pytest

from conftest import make_rows, write_samples
from helpers import check_output

pytestmark = pytest.mark.slow

FAST = {"max_tokens": 16, "batch_size": 2, "k": 1, "temperature": 1.0, "num_cpus_per_actor": 0.5}


def _run(tiny_model, tmp_path, rows, **kw):
    from tribunal.jobs.sample import SampleConfig, run

    samples = write_samples(tmp_path / "in" / "s.parquet", rows)
    out = str(tmp_path / "out")
    manifest = run(SampleConfig(input=str(samples), output=out, model=tiny_model, **{**FAST, **kw}))
    return out, manifest


@pytest.mark.parametrize("fault", ["init_exit", "batch_exit"])
def test_engine_actor_dies_once_and_the_job_finishes(fault, arm, tiny_model, tmp_path):
    armed = arm(fault)
    rows = make_rows(6)
    out, manifest = _run(tiny_model, tmp_path, rows)
    assert not armed.exists(), "the fault never fired"
    check_output(out, [r["id"] for r in rows], k=1)
    assert manifest["counts"]["reconciled"] and manifest["counts"]["samples_out"] == 6
    policy = manifest["fault_policy"]
    assert policy["max_restarts"] >= 1 and policy["max_task_retries"] == -1 and policy["max_consecutive_actor_init_deaths"] >= 1


def test_raising_row_and_too_long_prompt_are_quarantined(arm, tiny_model, tmp_path):
    rows = make_rows(5)
    arm("raise_ids", "s0001\n")
    long_row = make_rows(1, prefix="long")[0]
    long_row["context"] = [{"role": "user", "content": "word " * 6000}]  # > 4096 positions
    out, manifest = _run(tiny_model, tmp_path, rows + [long_row])
    res = check_output(out, [r["id"] for r in rows] + ["long0000"], k=1,
                       quarantined={"s0001": "stage_error", "long0000": "prompt_too_long"})
    assert "injected fault for sample s0001" in res["details"]["s0001"]
    assert "the model's context is 4096" in res["details"]["long0000"]
    counts = manifest["counts"]
    assert counts["reconciled"] and counts["quarantine_reasons"] == {"prompt_too_long": 1, "stage_error": 1}
    # the rest of the batch the raising row was in went through (batches of 2: s0000 with s0001)
    assert counts["samples_out"] == 4


def test_stalled_job_fails_with_one_line(arm, tiny_model, tmp_path, monkeypatch, capsys):
    from tribunal.cluster.pools import NO_PROGRESS_TIMEOUT_ENV
    from tribunal.jobs.cli import run_main

    monkeypatch.setenv(NO_PROGRESS_TIMEOUT_ENV, "20")  # above an engine actor's start-up on a loaded 2-core machine
    armed = arm("batch_stall")
    samples = write_samples(tmp_path / "s.parquet", make_rows(2))
    rc = run_main("sample", ["--input", str(samples), "--output", str(tmp_path / "o"), "--model", tiny_model, "--k", "1",
                             "--max-tokens", "8", "--batch-size", "2", "--num-cpus-per-actor", "0.5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert not armed.exists(), "the stall never happened"
    assert rc == 2, err
    assert err[-1].startswith("tribunal sample: error: the job stalled: Dataset execution made no progress"), err[-1]
    assert NO_PROGRESS_TIMEOUT_ENV in err[-1]


@pytest.mark.parametrize("mode", ["prob", "grm"])
def test_score_never_sends_a_prompt_longer_than_the_context(mode, fault_dir, tiny_model, tmp_path):
    """``score``: a rollout whose text would not fit the model's context is never sent to the
    engine: it is quarantined with reason ``prompt_too_long`` (as ``sample`` does); the others are
    scored as usual, and the counts reconcile."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.jobs.pipeline.outputs import OutputDir
    from tribunal.jobs.score import ScoreConfig, run
    from tribunal.schemas import columns as c

    ctx = [{"role": "user", "content": "What is 2 + 2?"}]
    rows = [{"context": ctx, "response": f"<think>t{j}</think>\n<answer>4</answer>", "answer": "4", "data_source": "toy"} for j in range(3)]
    rows.append({"context": [{"role": "user", "content": "word " * 6000}], "response": "<answer>4</answer>", "answer": "4", "data_source": "toy"})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    extra = {"reference_column": "answer"} if mode == "prob" else {"form": "pointwise", "k": 1, "max_tokens": 16}
    m = run(ScoreConfig(input=str(tmp_path / "r.parquet"), output=str(tmp_path / "o"), mode=mode, model=tiny_model,
                        batch_rollouts=4, num_cpus_per_actor=0.5, **extra))
    counts = m["counts"]
    assert counts["reconciled"] and (counts["rows_in"], counts["rows_out"], counts["quarantined"]) == (4, 3, 1)
    assert counts["quarantine_reasons"] == {"prompt_too_long": 1}
    out = OutputDir(str(tmp_path / "o"))
    scored = out.read(out.parts()).to_pylist()
    assert len(scored) == 3 and all(len(r[c.CONTEXT][0][c.CONTENT]) < 10_000 for r in scored)
    q = out.read(out.quarantine_parts()).to_pylist()
    assert [r[c.REASON] for r in q] == ["prompt_too_long"] and len(json.loads(q[0][c.RAW])[c.CONTEXT][0][c.CONTENT]) > 10_000
    if mode == "prob":
        assert all(r[c.REWARD] is not None for r in scored)
