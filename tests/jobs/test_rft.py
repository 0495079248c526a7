"""RFT: the funnel rules, the column-wise filter against them, and the whole job on a real Ray."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, write_samples
from test_sample_job import run_then_kill
from tribunal.jobs.grm import grm_math as gm
from tribunal.jobs.rft_filter import verdicts
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

H, N = True, False  # hinted, non-hinted


@pytest.mark.parametrize(
    "mode,hinted,correct,errors,outcome,verdicts",
    [
        # accepted: some correct, some not; the hinted one (if any) is unused under auto
        ("auto", [N, N, N], [True, False, False], [None, None, "no_scores"], "accepted", ["accepted", "incorrect", "no_scores"]),
        # too easy: every non-hinted trajectory correct, everything rejected
        ("auto", [N, N, N], [True, True, True], [None] * 3, "too_easy", ["too_easy"] * 3),
        ("always", [N, N, H], [True, True, True], [None] * 3, "too_easy", ["too_easy"] * 3),
        # failed sample rescued by its hinted trajectory
        ("auto", [N, N, H], [False, False, True], [None, "truncated", None], "accepted", ["incorrect", "truncated", "accepted"]),
        # not even the hinted one: no_correct
        ("auto", [N, N, H], [False, False, False], [None, None, "wrong_count"], "no_correct", ["incorrect", "incorrect", "wrong_count"]),
        # never: a hinted trajectory is not kept even when correct
        ("never", [N, N, H], [False, False, True], [None] * 3, "no_correct", ["incorrect", "incorrect", "hint_unused"]),
        # always: a correct hinted trajectory is kept beside correct non-hinted ones
        ("always", [N, N, H], [True, False, True], [None] * 3, "accepted", ["accepted", "incorrect", "accepted"]),
        # auto with a correct non-hinted one: the hinted one is not used
        ("auto", [N, N, H], [True, False, True], [None] * 3, "accepted", ["accepted", "incorrect", "hint_unused"]),
    ],
)
def test_rft_verdicts(mode, hinted, correct, errors, outcome, verdicts):
    assert gm.rft_verdicts(hinted, correct, errors, mode) == (outcome, verdicts)


def test_correctness_feeding_the_funnel_n1_and_ties():
    # n = 1 (single-response 0/1 template): correct iff the score equals the label
    assert gm.is_correct((1,), (1.0,)) and not gm.is_correct((0,), (1.0,))
    # a tie at the top is incorrect, so a sample whose every trajectory ties is no_correct
    tie = gm.is_correct((7, 7), (1.0, 0.0))
    assert gm.rft_verdicts([N, N], [tie, tie], [None, None], "never") == ("no_correct", ["incorrect", "incorrect"])


@pytest.mark.parametrize("scattered", [False, True], ids=["together", "scattered"])
@pytest.mark.parametrize("mode", gm.HINT_MODES)
def test_verdicts_match_pure_rule(mode, scattered):
    rng = random.Random(mode)
    rows = []
    for s in range(400):
        k = rng.randint(1, 4)
        flags = [False] * k + ([True] if rng.random() < 0.5 else [])
        for j, h in enumerate(flags):
            ok = rng.random() < 0.5
            rows.append({c.ID: f"s{s}", c.SAMPLE_INDEX: 0 if h else j, c.HINTED: h, c.CORRECT: ok,
                         c.PARSE_ERROR: None if ok or rng.random() < 0.5 else "no_scores"})
    frame = pl.DataFrame(rows)
    if scattered:  # a sample's rows not next to each other: grouped by id instead of by run
        frame = frame.sample(fraction=1.0, shuffle=True, seed=3)
    got, per_sample = verdicts(frame, mode)
    assert len(got) == len(rows)
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r[c.ID], []).append(r)
    want = {}
    for sid, rs in by_id.items():
        outcome, vs = gm.rft_verdicts([r[c.HINTED] for r in rs], [r[c.CORRECT] for r in rs], [r[c.PARSE_ERROR] for r in rs], mode)
        for r, v in zip(rs, vs):
            want[(sid, r[c.SAMPLE_INDEX], r[c.HINTED])] = (v, outcome)
    for r in got.iter_rows(named=True):
        assert (r[c.VERDICT], r[c.OUTCOME]) == want[(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED])]
    assert sorted(per_sample[c.ID].to_list()) == sorted(by_id)
    for r in per_sample.iter_rows(named=True):
        assert r[c.OUTCOME] == want[next((k for k in want if k[0] == r[c.ID]))][1]
        assert r["accepted"] == sum(v == "accepted" for k, (v, _) in want.items() if k[0] == r[c.ID])


def read_dir(d: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(d.glob("part-*.parquet"))])


def sorted_rows(t: pa.Table) -> list[dict]:
    return sorted(t.to_pylist(), key=lambda r: (r[c.ID], r[c.HINTED], r[c.SAMPLE_INDEX]))


FAST = {"max_tokens": 48, "batch_size": 4}


def test_rft_job_end_to_end(ray_local, tiny_model, s3_server, tmp_path):
    from tribunal.jobs.rft import RftConfig, run
    from tribunal.jobs.rft_filter import RftFilterConfig
    from tribunal.jobs.rft_filter import run as run_filter
    from tribunal.jobs.grm.protocol import build_messages, build_metarm_messages, load_template

    rows = make_rows(12) + make_rows(2, labelled=False, prefix="nolab") + [
        {"id": "tie", "context": [{"role": "user", "content": "q"}], "responses": ["a", "b"], "labels": [1.0, 1.0]}]
    samples = write_samples(tmp_path / "prefs.parquet", rows)
    out = tmp_path / "rft_run"
    # A tiny target: the trajectories stay in several files, so rft-filter below reads several chunks.
    result = run(RftConfig(input=str(samples), output=str(out), model=tiny_model, k=3, hint="auto", seed=3, target_file_mb=0.001, **FAST))
    traj = read_dir(out / "trajectories")
    sft, metarm = read_dir(out / "sft"), read_dir(out / "metarm")
    assert traj.schema.equals(arrow.TRAJECTORY) and sft.schema.equals(arrow.SFT) and metarm.schema.equals(arrow.METARM)

    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel == result["funnel"]
    o = funnel["outcomes"]
    assert funnel["rows_in"] == 15 and o["invalid"] == 3 and funnel["reconciled"]
    assert o["accepted"] + o["too_easy"] + o["no_correct"] == 12
    assert sum(funnel["trajectory_verdicts"].values()) == traj.num_rows == funnel["trajectories"]
    assert sum(int(n) * cnt for n, cnt in funnel["accepted_trajectories_per_sample"].items()) == sft.num_rows
    q = read_dir(out / "trajectories" / "_quarantine")
    assert sorted(q[c.REASON].to_pylist()) == ["labels_no_unique_max", "no_labels", "no_labels"]

    # Stored verdicts (row-wise rule in the actor) == the column-wise filter's verdicts.
    recomputed, _ = verdicts(pl.from_arrow(traj.select([c.ID, c.SAMPLE_INDEX, c.HINTED, c.CORRECT, c.PARSE_ERROR])), "auto")
    stored = {(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED]): (r[c.VERDICT], r[c.OUTCOME]) for r in traj.to_pylist()}
    for r in recomputed.iter_rows(named=True):
        assert stored[(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED])] == (r[c.VERDICT], r[c.OUTCOME])
    # Hinted trajectories exist exactly for samples with no correct non-hinted one (auto).
    by_id: dict[str, list[dict]] = {}
    for r in traj.to_pylist():
        by_id.setdefault(r[c.ID], []).append(r)
    for sid, rs in by_id.items():
        assert any(r[c.HINTED] for r in rs) == (not any(r[c.CORRECT] for r in rs if not r[c.HINTED]))

    # SFT rows are exactly the accepted trajectories, with the prompt as the model saw it.
    tpl = load_template("default")
    accepted = {(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED]): r for r in traj.to_pylist() if r[c.VERDICT] == "accepted"}
    assert {(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED]) for r in sft.to_pylist()} == set(accepted)
    for r in sft.to_pylist():
        t = accepted[(r[c.ID], r[c.SAMPLE_INDEX], r[c.HINTED])]
        view = [t[c.RESPONSES][i] for i in t[c.PERMUTATION]]
        hint = gm.invert_permutation(t[c.PERMUTATION])[gm.unique_argmax(t[c.LABELS])] + 1 if t[c.HINTED] else None
        assert r[c.MESSAGES][:-1] == build_messages(tpl, t[c.CONTEXT], view, hint=hint)
        assert r[c.MESSAGES][-1] == {"role": "assistant", "content": t[c.TEXT]}
        # TRL's conversational prompt-completion split, beside messages
        assert r[c.PROMPT] == r[c.MESSAGES][:-1] and r[c.COMPLETION] == [{"role": "assistant", "content": t[c.TEXT]}]
    # Meta-RM: one row per non-hinted trajectory, label = correct.
    nonhinted = {(r[c.ID], r[c.SAMPLE_INDEX]): r for r in traj.to_pylist() if not r[c.HINTED]}
    assert metarm.num_rows == len(nonhinted)
    for r in metarm.to_pylist():
        t = nonhinted[(r[c.ID], r[c.SAMPLE_INDEX])]
        assert r[c.LABEL] == int(t[c.CORRECT])
        assert r[c.MESSAGES] == build_metarm_messages(t[c.CONTEXT], [t[c.RESPONSES][i] for i in t[c.PERMUTATION]], t[c.TEXT])
    assert funnel["metarm_label_balance"] == {"1": sum(metarm[c.LABEL].to_pylist()), "0": metarm.num_rows - sum(metarm[c.LABEL].to_pylist())}

    # rft-filter reproduces rft's corpora from its trajectories; other rules need no regeneration.
    again = tmp_path / "refilter"
    # Small chunks, blocks and row groups: several of each, read ahead and written on threads.
    run_filter(RftFilterConfig(input=str(out / "trajectories"), output=str(again), hint="auto", chunk_rows=10, render_rows=7, row_group_rows=3))
    import pyarrow.parquet as pq

    again_parts = sorted((again / "sft").glob("part-*.parquet"))
    assert len(again_parts) > 1 and any(pq.ParquetFile(p).num_row_groups > 1 for p in again_parts)
    assert sorted_rows(read_dir(again / "sft")) == sorted_rows(sft)
    assert sorted_rows(read_dir(again / "metarm")) == sorted_rows(metarm)
    # ... and over S3 (a real S3-protocol server on loopback): s3:// in, s3:// out.
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    fs.mkdir("rft-test")
    fs.put(str(out / "trajectories"), "rft-test/trajectories", recursive=True)
    on_s3 = run_filter(RftFilterConfig(input="s3://rft-test/trajectories", output="s3://rft-test/run", chunk_rows=10, row_group_rows=3))
    fs.invalidate_cache()
    assert on_s3["sft"] == "s3://rft-test/run/sft" and on_s3["funnel"] == result["funnel"]
    for corpus, want in (("sft", sft), ("metarm", metarm)):
        parts = fs.glob(f"rft-test/run/{corpus}/part-*.parquet")
        assert parts and not fs.glob(f"rft-test/run/{corpus}/.tmp-*")
        assert sorted_rows(pa.concat_tables([pq.read_table(fs.open(p, "rb")) for p in parts])) == sorted_rows(want)
    assert json.loads(fs.cat("rft-test/run/funnel.json")) == result["funnel"]
    never = run_filter(RftFilterConfig(input=str(out / "trajectories"), output=str(tmp_path / "never"), hint="never"))
    assert not any(read_dir(tmp_path / "never" / "sft")[c.HINTED].to_pylist())
    assert never["funnel"]["reconciled"] and never["funnel"]["hinted_kept"] == 0
    with_hinted = run_filter(RftFilterConfig(input=str(out / "trajectories"), output=str(tmp_path / "wh"), metarm_include_hinted=True))
    assert with_hinted["funnel"]["metarm_rows"] == traj.num_rows and sum(traj[c.HINTED].to_pylist()) > 0
    assert sum(read_dir(tmp_path / "wh" / "metarm")[c.HINTED].to_pylist()) == sum(traj[c.HINTED].to_pylist())

    # Deterministic: same input, model, seed and options give the same corpora.
    out2 = tmp_path / "rft_run2"
    run(RftConfig(input=str(samples), output=str(out2), model=tiny_model, k=3, hint="auto", seed=3, **{**FAST, "batch_size": 5}))
    assert sorted_rows(read_dir(out2 / "sft")) == sorted_rows(sft)
    assert sorted_rows(read_dir(out2 / "metarm")) == sorted_rows(metarm)


@pytest.mark.slow
def test_rft_resumes_after_sigkill(tiny_model, tmp_path):
    n = 12
    samples = write_samples(tmp_path / "prefs.parquet", make_rows(n))
    out = tmp_path / "rft_run"
    cmd = [sys.executable, "-m", "tribunal.jobs.rft", "--input", str(samples), "--output", str(out), "--model", tiny_model,
           "--n-rft", "2", "--batch-size", "2", "--max-tokens", "32", "--hint", "always"]
    traj = out / "trajectories"
    env = run_then_kill(cmd, traj)
    assert not (out / "funnel.json").exists()
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr
    t = read_dir(traj)
    keys = list(zip(t[c.ID].to_pylist(), t[c.SAMPLE_INDEX].to_pylist(), t[c.HINTED].to_pylist()))
    assert len(keys) == len(set(keys)) == 3 * n  # 2 non-hinted + 1 hinted (always) per sample
    funnel = json.loads((out / "funnel.json").read_text())
    assert funnel["reconciled"] and funnel["trajectories"] == 3 * n
    assert read_dir(out / "metarm").num_rows == 2 * n
