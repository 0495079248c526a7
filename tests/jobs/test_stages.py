"""Stages as plain functions: the job-dependent quarantine rules and shard naming."""

import pyarrow as pa

from jobs.stages import shard_name, split_unusable
from schemas import arrow
from schemas import columns as c


def samples(rows):
    return pa.Table.from_pylist(rows, schema=arrow.SAMPLE)


def test_split_unusable_quarantines_wrong_n_and_missing_labels():
    ctx = [{"role": "user", "content": "q"}]
    t = samples([
        {c.ID: "ok", c.CONTEXT: ctx, c.RESPONSES: ["a", "b"], c.LABELS: [1.0, 0.0]},
        {c.ID: "three", c.CONTEXT: ctx, c.RESPONSES: ["a", "b", "c"], c.LABELS: [1.0, 0.0, 0.0]},
        {c.ID: "nolab", c.CONTEXT: ctx, c.RESPONSES: ["a", "b"], c.LABELS: None},
    ])
    valid, q = split_unusable(t, (2, 2), require_labels=True)
    assert valid[c.ID].to_pylist() == ["ok"]
    assert dict(zip(q[c.ID].to_pylist(), q[c.REASON].to_pylist())) == {"three": "unsupported_n", "nolab": "no_labels"}
    assert q.schema.equals(arrow.QUARANTINE) and '"three"' in q[c.RAW][0].as_py()
    valid, q = split_unusable(t, (1, None), require_labels=False)
    assert valid.num_rows == 3 and q.num_rows == 0


def test_shard_name_is_deterministic():
    assert shard_name(["a", "b"]) == shard_name(["a", "b"]) != shard_name(["b", "a"])
    assert shard_name(["a"]).startswith("part-") and shard_name(["a"]).endswith(".parquet")
