"""export: verl and OpenRLHF layouts, read back by plain pyarrow, column by column."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq

from tribunal.jobs.export import EXPORT_SCHEMAS, ExportConfig, run
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


def scored(tmp_path):
    def ctx(q):
        return [{"role": "user", "content": q}]

    rows = [
        # prompt b: three rollouts, rewards 0.2, 0.9, 0.2 -> best 1, worst 0 (tie with 2: lower index)
        ("b", 2, ctx("Q b"), "rb2", "B", None, 0.2),
        ("b", 0, ctx("Q b"), "rb0", "B", None, 0.2),
        ("b", 1, ctx("Q b"), "rb1", "B", None, 0.9),
        # prompt a: one null reward, two equal -> no DPO pair
        ("a", 0, ctx("Q a"), "ra0", "A", "math", 0.5),
        ("a", 1, ctx("Q a"), "ra1", "A", "math", None),
        ("a", 2, ctx("Q a"), "ra2", "A", "math", 0.5),
    ]
    keys = (c.PROMPT_ID, c.ROLLOUT_INDEX, c.CONTEXT, c.RESPONSE, c.REFERENCE, c.DATA_SOURCE, c.REWARD)
    t = pa.Table.from_pylist([dict(zip(keys, r)) for r in rows], schema=arrow.SCORED_ROLLOUT)
    d = tmp_path / "kept"
    d.mkdir()
    pq.write_table(t.slice(0, 4), d / "part-1.parquet")
    pq.write_table(t.slice(4), d / "part-2.parquet")
    return d


def test_verl(tmp_path):
    m = run(ExportConfig(input=str(scored(tmp_path)), output=str(tmp_path / "verl"), format="verl"))
    t = pq.read_table(tmp_path / "verl" / "part-00000.parquet")
    assert t.schema == EXPORT_SCHEMAS["verl"] and m["counts"]["rows"] == 2
    assert t.column("data_source").to_pylist() == ["math", "tribunal"]
    assert t.column("prompt").to_pylist() == [[{"role": "user", "content": "Q a"}], [{"role": "user", "content": "Q b"}]]
    assert t.column("ability").to_pylist() == ["general", "general"]
    assert t.column("reward_model").to_pylist() == [{"style": "rule", "ground_truth": "A"}, {"style": "rule", "ground_truth": "B"}]
    assert t.column("extra_info").to_pylist() == [{"index": 0, "prompt_id": "a"}, {"index": 1, "prompt_id": "b"}]


def test_openrlhf(tmp_path):
    m = run(ExportConfig(input=str(scored(tmp_path)), output=str(tmp_path / "o"), format="openrlhf"))
    t = pq.read_table(tmp_path / "o" / "part-00000.parquet")
    counts = m["counts"]
    assert t.schema == EXPORT_SCHEMAS["openrlhf"] and (counts["rollouts_in"], counts["rows"], counts["no_reward"]) == (6, 5, 1)
    assert counts["dropped"] == {"no_reward": 1} and counts["reconciled"]
    assert t.column("output").to_pylist() == ["ra0", "ra2", "rb0", "rb1", "rb2"]
    assert t.column("reward").to_pylist() == [0.5, 0.5, 0.2, 0.9, 0.2]
    assert t.column("input").to_pylist()[2] == [{"role": "user", "content": "Q b"}]


def test_openrlhf_dpo(tmp_path):
    m = run(ExportConfig(input=str(scored(tmp_path)), output=str(tmp_path / "d"), format="openrlhf-dpo"))
    t = pq.read_table(tmp_path / "d" / "part-00000.parquet")
    assert t.schema == EXPORT_SCHEMAS["openrlhf-dpo"] and m["counts"]["no_pair"] == 1
    assert t.column("prompt").to_pylist() == [[{"role": "user", "content": "Q b"}]]
    assert t.column("chosen").to_pylist() == ["rb1"] and t.column("rejected").to_pylist() == ["rb0"]
    assert t.column("chosen_reward").to_pylist() == [0.9] and t.column("rejected_reward").to_pylist() == [0.2]


def test_export_not_scored_is_one_line(tmp_path):
    pq.write_table(pa.table({"prompt_id": ["a"]}), tmp_path / "x.parquet")
    r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", "export", "--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "x.parquet" in lines[0] and "'rollout_index'" in lines[0]
