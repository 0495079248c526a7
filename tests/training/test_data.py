"""The rank-sharded reader: coverage, determinism, truncation, resume, schema errors, S3."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError
from tribunal.training.data import Corpus, ShardedReader, epoch_order, example_keys

NEED = {c.MESSAGES: arrow.METARM.field(c.MESSAGES).type, c.LABEL: pa.int8()}


def metarm_rows(start: int, n: int) -> list[dict]:
    return [
        {
            c.ID: f"s{(start + i) // 2}",
            c.SAMPLE_INDEX: (start + i) % 2,
            c.HINTED: False,
            c.MESSAGES: [{c.ROLE: "user", c.CONTENT: f"q{start + i}"}, {c.ROLE: "assistant", c.CONTENT: f"a{start + i}"}],
            c.LABEL: (start + i) % 2,
        }
        for i in range(n)
    ]


def write_corpus(root, sizes, row_group=3, manifest=True):
    """Parts of the given row counts (uneven on purpose), row groups of ``row_group`` rows."""
    root.mkdir(parents=True, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        table = pa.Table.from_pylist(metarm_rows(start, n), schema=arrow.METARM)
        pq.write_table(table, root / f"part-{i:03d}.parquet", row_group_size=row_group)
        start += n
    if manifest:
        (root / "_manifest.json").write_text(json.dumps({"rows": start}))
    return str(root), start


def all_keys(n):
    return example_keys(pa.Table.from_pylist(metarm_rows(0, n), schema=arrow.METARM))


def run_rank(corpus, rank, world, consumed=0, epochs=1, **kw):
    reader = ShardedReader(corpus, rank, world, **kw)
    out = [(b.epoch, b.step, b.micro, b.consumed_samples, tuple(example_keys(b.rows))) for b in reader.batches(consumed, epochs)]
    reader.close()
    return out


def test_footers_only_and_coverage_with_truncation(tmp_path):
    uri, n = write_corpus(tmp_path / "c", [7, 6, 8])  # 21 rows, uneven shards
    corpus = Corpus.open(uri, NEED)
    assert corpus.rows == 21 and corpus.group_rows == ((3, 3, 1), (3, 3), (3, 3, 2))
    dropped_log = []
    per_rank = []
    for rank in range(2):
        reader = ShardedReader(corpus, rank, 2, micro_batch=2, grad_accum=2, seed=5, log=lambda e, keys: dropped_log.append((e, keys)))
        assert reader.global_batch == 8 and reader.steps_per_epoch == 2 and reader.dropped_per_epoch == 5
        per_rank.append([b for b in reader.batches(0, epochs=2)])
    # every rank takes the same number of steps (no collective can hang)
    assert len(per_rank[0]) == len(per_rank[1]) == 2 * 2 * 2
    for epoch in range(2):
        seen = [k for mbs in per_rank for b in mbs if b.epoch == epoch for k in example_keys(b.rows)]
        dropped = [keys for e, keys in dropped_log if e == epoch][0]  # rank 0's log; rank 1 logs the same
        assert len(seen) == 16 and len(dropped) == 5
        # each id once per epoch, except the logged remainder, which is exactly what is missing
        assert Counter(seen + dropped) == Counter(all_keys(n))
    # rows carry their data: the message text matches the key
    b = per_rank[1][3]
    for key, msgs in zip(example_keys(b.rows), b.rows.column(c.MESSAGES).to_pylist()):
        s, j = key.split("#")
        assert msgs[0][c.CONTENT] == f"q{int(s[1:]) * 2 + int(j)}"
    # epochs are shuffled differently, runs identically
    assert list(epoch_order(corpus.group_rows, 5, 0, 8)) != list(epoch_order(corpus.group_rows, 5, 1, 8))
    assert run_rank(corpus, 0, 2, micro_batch=2, seed=5) == run_rank(Corpus.open(uri, NEED), 0, 2, micro_batch=2, seed=5)
    assert run_rank(corpus, 0, 2, micro_batch=2, seed=5) != run_rank(corpus, 0, 2, micro_batch=2, seed=6)


@pytest.mark.parametrize("consumed", [8, 16, 24])  # mid-epoch, at an epoch boundary, into epoch 2
def test_resume_from_consumed_samples(tmp_path, consumed):
    uri, _ = write_corpus(tmp_path / "c", [7, 6, 8])
    corpus = Corpus.open(uri, NEED)
    kw = dict(micro_batch=2, grad_accum=2, seed=1)
    for rank in range(2):
        full = run_rank(corpus, rank, 2, 0, 3, **kw)
        resumed = run_rank(corpus, rank, 2, consumed, 3, **kw)
        assert resumed == [b for b in full if b[3] > consumed]
    with pytest.raises(TribunalError, match="not a multiple of the global batch 8"):
        ShardedReader(corpus, 0, 2, **kw).position(12)


def test_memory_is_bounded_by_the_window(tmp_path):
    uri, n = write_corpus(tmp_path / "c", [40, 40, 40], row_group=4)  # 30 row groups
    corpus = Corpus.open(uri, NEED)
    reader = ShardedReader(corpus, 0, 1, micro_batch=5, shuffle_window=2)
    seen = []
    for b in reader.batches(0, 1):
        assert len(reader._cache) <= 4
        seen += example_keys(b.rows)
    assert sorted(seen) == sorted(all_keys(n))
    assert reader.groups_read <= 30 + 2  # each row group read about once per epoch


def test_schema_checked_on_open(tmp_path):
    uri, _ = write_corpus(tmp_path / "c", [4, 4])
    bad = pa.Table.from_pylist([{c.ID: "x", c.SAMPLE_INDEX: 0, c.HINTED: False, c.MESSAGES: [{c.ROLE: "user", c.CONTENT: "q"}], c.LABEL: "yes"}])
    pq.write_table(bad, tmp_path / "c" / "part-009.parquet")
    with pytest.raises(TribunalError, match=r"part-009.parquet: column 'label' has type string, expected int8"):
        Corpus.open(uri, NEED)
    pq.write_table(bad.drop([c.LABEL]), tmp_path / "c" / "part-009.parquet")
    with pytest.raises(TribunalError, match=r"part-009.parquet: no 'label' column"):
        Corpus.open(uri, NEED)


def test_only_committed_parts_and_manifest_checked(tmp_path):
    uri, _ = write_corpus(tmp_path / "c", [4, 4])
    (tmp_path / "c" / ".tmp-abc-part-7.parquet").write_bytes(b"partial")
    (tmp_path / "c" / "_quarantine").mkdir()
    assert Corpus.open(uri, NEED).rows == 8
    (tmp_path / "c" / "_manifest.json").write_text(json.dumps({"rows": 9}))
    with pytest.raises(TribunalError, match="declares 9 rows but the committed parts hold 8"):
        Corpus.open(uri, NEED)
    with pytest.raises(TribunalError, match="no committed part"):
        Corpus.open(str(tmp_path), NEED)
    with pytest.raises(TribunalError, match="fewer than one global batch"):
        ShardedReader(Corpus.open(str(tmp_path / "c" / "part-000.parquet"), NEED), 0, 2, micro_batch=4)


def test_corpus_hash_changes_with_content(tmp_path):
    a = Corpus.open(write_corpus(tmp_path / "a", [4, 4])[0], NEED).digest
    assert a == Corpus.open(write_corpus(tmp_path / "b", [4, 4])[0], NEED).digest
    assert a != Corpus.open(write_corpus(tmp_path / "d", [4, 5])[0], NEED).digest


def test_reads_from_s3(tmp_path, s3_server):
    import s3fs

    uri, n = write_corpus(tmp_path / "c", [5, 6])
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    fs.mkdir("corpus-bucket")
    fs.put(uri + "/", "corpus-bucket/metarm/", recursive=True)
    local = run_rank(Corpus.open(uri, NEED), 1, 2, micro_batch=2, seed=3)
    remote_corpus = Corpus.open("s3://corpus-bucket/metarm", NEED)
    assert remote_corpus.digest == Corpus.open(uri, NEED).digest
    assert run_rank(remote_corpus, 1, 2, micro_batch=2, seed=3) == local


def test_length_bucketing_keeps_coverage_and_resume_and_cuts_padding(tmp_path):
    """bucket_window: rows sorted by length within windows of global batches, batches in a seeded
    order: the same rows per epoch (and the same dropped tail), deterministic, resumable mid-window,
    and micro-batches whose rows have similar lengths."""
    root = tmp_path / "b"
    root.mkdir()
    rows = [{c.ID: f"s{i}", c.SAMPLE_INDEX: 0, c.HINTED: False,
             c.MESSAGES: [{c.ROLE: "user", c.CONTENT: "x" * (1 + (i * 37) % 101)}, {c.ROLE: "assistant", c.CONTENT: "y" * (i % 5)}],
             c.LABEL: i % 2} for i in range(70)]
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow.METARM), root / "part-000.parquet", row_group_size=8)
    corpus = Corpus.open(str(root), NEED)
    length = {f"s{i}#0": len(r[c.MESSAGES][0][c.CONTENT]) + len(r[c.MESSAGES][1][c.CONTENT]) for i, r in enumerate(rows)}
    kw = {"micro_batch": 2, "grad_accum": 2, "seed": 5, "shuffle_window": 3}  # global batch 8: 8 steps, 6 rows dropped

    def padding(batches):  # characters of padding: each micro-batch pads its rows to its longest
        return sum(max(length[k] for k in b[4]) * len(b[4]) - sum(length[k] for k in b[4]) for b in batches)

    plain = [run_rank(corpus, r, 2, epochs=2, **kw) for r in (0, 1)]
    bucket = [run_rank(corpus, r, 2, epochs=2, bucket_window=3, **kw) for r in (0, 1)]
    assert bucket == [run_rank(corpus, r, 2, epochs=2, bucket_window=3, **kw) for r in (0, 1)]  # deterministic
    for epoch in (0, 1):
        seen = lambda runs: Counter(k for run in runs for b in run if b[0] == epoch for k in b[4])  # noqa: E731
        assert seen(bucket) == seen(plain) and len(seen(bucket)) == 64
    assert [b[:4] for b in bucket[0]] == [b[:4] for b in plain[0]]  # same steps, positions, consumed_samples
    assert padding(bucket[0] + bucket[1]) < 0.5 * padding(plain[0] + plain[1])
    # within a window of 3 steps the global batches do not overlap in length
    for epoch in (0, 1):
        steps = {}
        for run in bucket:
            for b in run:
                if b[0] == epoch:
                    steps.setdefault(b[1], []).extend(length[k] for k in b[4])
        for w in range(0, 8, 3):
            spans = sorted((min(steps[s]), max(steps[s])) for s in range(w, min(w + 3, 8)))
            assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    # resume mid-window (step 4 of epoch 0: window 1 has begun) gives the uninterrupted tail
    for r in (0, 1):
        assert run_rank(corpus, r, 2, consumed=4 * 8, epochs=2, bucket_window=3, **kw) == [b for b in bucket[r] if (b[0], b[1]) >= (0, 4)]


def test_prefetch_keeps_the_order_hands_errors_over_and_closes():
    import threading

    from tribunal.training.data import Prefetch

    assert list(Prefetch(iter(range(50)), ahead=2)) == list(range(50))

    def failing():
        yield 1
        raise TribunalError("bad row")

    got = []
    with pytest.raises(TribunalError, match="bad row"):
        for x in Prefetch(failing(), ahead=2):
            got.append(x)
    assert got == [1]
    ahead = Prefetch(iter(range(10**6)), ahead=2)  # closed early: the thread stops, nothing left running
    assert next(iter(ahead)) == 0
    ahead.close()
    assert not any(t.name == "tribunal-prefetch" and t.is_alive() for t in threading.enumerate())


def test_corpus_template_reads_the_manifest(tmp_path):
    from tribunal.training.data import corpus_template, write_sft_corpus

    assert corpus_template(str(tmp_path / "nowhere")) is None
    rows = [{"id": "s0", "sample_index": 0, "hinted": False, "permutation": [0],
             "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
             "prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]}]
    assert corpus_template(str(write_sft_corpus(rows, tmp_path / "a", job="t"))) is None
    assert corpus_template(str(write_sft_corpus(rows, tmp_path / "b", job="t", template="toy"))) == "toy"
    assert corpus_template(str(tmp_path / "b" / "part-00000.parquet")) is None  # a single file has no manifest
    (tmp_path / "b" / "_manifest.json").write_text(json.dumps({"template": "toy", "config": {"template": "my/file.txt"}}))
    assert corpus_template(str(tmp_path / "b")) == "my/file.txt"  # as the user gave it, first
    (tmp_path / "b" / "_manifest.json").write_text("{broken")
    assert corpus_template(str(tmp_path / "b")) is None
