"""metarm-score on a real local Ray with the toy meta-RM (trained by `tribunal train metarm`); then
guided voting over its output, and `sample` with an SFT checkpoint `tribunal train sft` just wrote."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.schemas import arrow
from tribunal.schemas import columns as c

pytestmark = pytest.mark.slow
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def trajectories(samples: int, k: int) -> list[dict]:
    rows = []
    for s in range(samples):
        n = 2 + s % 2
        labels = [0.0] * n
        labels[s % n] = 1.0
        for j in range(k):
            perm = [(i + j) % n for i in range(n)]
            best_view = perm.index(s % n)
            scores = [9 if i == (s % n if j % 2 == 0 else (s + 1) % n) else 3 for i in range(n)]
            rows.append({
                c.ID: f"s{s}", c.SAMPLE_INDEX: j, c.HINTED: False, c.N_RESPONSES: n, c.PERMUTATION: perm,
                c.TEXT: f"Analysis: response {best_view + 1} is best.\nScores: \\boxed{{{', '.join(str(scores[p]) for p in perm)}}}",
                c.SCORES: scores, c.LABELS: labels, c.CORRECT: j % 2 == 0,
                c.CONTEXT: [{"role": "user", "content": f"Question {s}: what is {s} + {s}?"}],
                c.RESPONSES: [f"It is {2 * s + i}." for i in range(n)],
            })
    return rows


def train(task: str, rows_fn, schema, tmp: Path, tiny_model: str, *flags: str) -> Path:
    data = tmp / f"{task}_corpus"
    data.mkdir()
    pq.write_table(pa.Table.from_pylist(rows_fn(), schema=schema), data / "part-000.parquet")
    out = tmp / f"{task}_run"
    cmd = [sys.executable, "-m", "tribunal.jobs.cli", "train", task, "--data", str(data), "--model", tiny_model, "--output", str(out),
           "--micro-batch", "2", "--max-steps", "3", "--lr", "1e-4", "--dist-timeout-s", "60", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "model"


@pytest.fixture(scope="module")
def meta_rm() -> str:
    """The committed toy meta-RM: a classifier trained by `tribunal train metarm` in the toy recipe
    (training a meta-RM under each ZeRO stage, and loading it back, is tests/training's)."""
    from tribunal.training.toy import recipe

    path = recipe.COMMITTED / "toy-metarm"
    if not (path / "config.json").is_file():
        pytest.skip("the toy models are not committed")
    return str(path)


def write_traj(d: Path, rows: list[dict], per_file: int) -> Path:
    d.mkdir(parents=True)
    for i in range(0, len(rows), per_file):
        pq.write_table(pa.Table.from_pylist(rows[i : i + per_file], schema=arrow.TRAJECTORY), d / f"part-{i:04d}.parquet")
    return d


def test_metarm_score_scores_resumes_and_guides_the_vote(ray_local, meta_rm, tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from tribunal.jobs import metarm_score, vote
    from tribunal.jobs.grm.protocol import build_metarm_messages

    rows = trajectories(5, 4)
    bad = dict(rows[0], **{c.ID: "broken", c.PERMUTATION: [0, 0]})
    src = write_traj(tmp_path / "traj", rows + [bad], per_file=6)
    out = tmp_path / "scored"
    cfg = metarm_score.MetaRmScoreConfig(input=str(src), output=str(out), model=meta_rm, batch_size=4, num_cpus_per_actor=0.5,
                                         dtype="float32")  # the bfloat16 export, computed in float32 as below
    m = metarm_score.run(cfg)
    counts = m["counts"]
    assert counts["rows_in"] == 21 and counts["rows_out"] == 20 and counts["quarantine_reasons"] == {"bad_permutation": 1}
    assert counts["reconciled"] and counts["duplicate_keys"] == 0 and counts["labelled"] == 20
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 5  # one shard per engine batch of 4
    table = pa.concat_tables([pq.read_table(p) for p in parts])
    assert table.schema.equals(arrow.TRAJECTORY_SCORED)
    # the score of a row = the classifier on the row-wise protocol rendering, through the chat template
    tok = AutoTokenizer.from_pretrained(meta_rm)
    model = AutoModelForSequenceClassification.from_pretrained(meta_rm, dtype=torch.float32).eval()
    for r in table.to_pylist()[:5]:
        view = [r[c.RESPONSES][p] for p in r[c.PERMUTATION]]
        text = tok.apply_chat_template(build_metarm_messages(r[c.CONTEXT], view, r[c.TEXT]), tokenize=False, add_generation_prompt=False)
        with torch.no_grad():
            p = torch.sigmoid(model(**tok(text, add_special_tokens=False, return_tensors="pt")).logits[0, 0]).item()
        assert abs(p - r[c.META_SCORE]) < 1e-5
    # resume: a lost shard is redone, nothing else
    lost = pq.read_table(parts[0]).num_rows
    parts[0].unlink()
    m2 = metarm_score.run(cfg)
    assert m2["this_run"]["scored"] == lost and m2["counts"]["rows_out"] == 20 and m2["counts"]["reconciled"]
    again = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    key = lambda r: (r[c.ID], r[c.SAMPLE_INDEX])  # noqa: E731
    before, after = sorted((key(r), r[c.META_SCORE]) for r in table.to_pylist()), sorted((key(r), r[c.META_SCORE]) for r in again.to_pylist())
    assert [k for k, _ in after] == [k for k, _ in before] and [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-6)
    # other model on the same output: refused
    with pytest.raises(Exception, match="model="):
        metarm_score.run(metarm_score.MetaRmScoreConfig(input=str(src), output=str(out), model=tiny_model))
    # guided voting reads the scores
    v = vote.run(vote.VoteConfig(input=str(out), output=str(tmp_path / "votes"), k=4))
    assert v["counts"]["guided"] is True and v["counts"]["k_meta"] == 2 and v["counts"]["samples"] == 5


def test_trained_sft_checkpoint_runs_sample(ray_local, tiny_model, tmp_path):
    from tribunal.jobs import sample

    def corpus():
        return [{c.ID: f"s{i}", c.SAMPLE_INDEX: 0, c.HINTED: False, c.PERMUTATION: [0, 1],
                 c.MESSAGES: [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "Scores: \\boxed{3, 7}"}],
                 c.PROMPT: [{"role": "user", "content": f"q{i}"}], c.COMPLETION: [{"role": "assistant", "content": "Scores: \\boxed{3, 7}"}]}
                for i in range(8)]

    grm = train("sft", corpus, arrow.SFT, tmp_path, tiny_model)
    samples = tmp_path / "samples.parquet"
    pq.write_table(pa.Table.from_pylist([{c.ID: "a", c.PROMPT: "Is the sky blue?", c.RESPONSES: ["Yes.", "No."], c.LABELS: [1.0, 0.0]}]), samples)
    m = sample.run(sample.SampleConfig(input=str(samples), output=str(tmp_path / "traj"), model=str(grm), k=2, max_tokens=24,
                                       batch_size=1, num_cpus_per_actor=0.5))
    assert m["counts"]["trajectories"] == 2 and m["counts"]["reconciled"]


def test_label_with_meta_rm(ray_local, tiny_model, meta_rm, tmp_path):
    from tribunal.jobs import label

    samples = tmp_path / "samples.parquet"
    pq.write_table(pa.Table.from_pylist([
        {c.ID: f"q{i}", c.PROMPT: f"What is {i} + {i}?", c.RESPONSES: [f"{2 * i}", f"{2 * i + 1}"], c.LABELS: [1.0, 0.0]} for i in range(2)
    ]), samples)
    cfg = label.LabelConfig(input=str(samples), output=str(tmp_path / "out"), model=tiny_model, k=3, max_tokens=24, batch_size=2,
                            num_cpus_per_actor=0.5, meta_rm=meta_rm)
    res = label.run(cfg)
    assert res["metarm_score"]["counts"]["rows_out"] == 6 and res["metarm_score"]["counts"]["reconciled"]
    counts = res["vote"]["counts"]
    assert counts["guided"] is True and counts["k_meta"] == 2 and counts["samples"] == 2
    votes = pq.read_table(next((tmp_path / "out" / "votes").glob("part-*.parquet"))).to_pylist()
    assert all(v[c.K] == 2 for v in votes)  # ceil(3/2) kept by meta score
    with pytest.raises(ValueError, match="k_meta"):
        label.LabelConfig(input=str(samples), output="o", model=tiny_model, k=3, k_meta=2)
