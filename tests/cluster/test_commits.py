"""The commit protocol of output files, locally and on S3 (a real moto server on loopback):
create-if-absent commit records, readers that trust them only, two processes racing for one
shard, merging committed files (what `sample` rolls and `compact` does), legacy outputs."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import posixpath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.cluster import storage

SCHEMA = pa.schema([("id", pa.string()), ("x", pa.int64())])


def table(prefix: str, n: int = 3) -> pa.Table:
    return pa.table({"id": [f"{prefix}{i}" for i in range(n)], "x": list(range(n))}, schema=SCHEMA)


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(filesystem, directory URI, directory path) on the local disk or the moto server."""
    if request.param == "s3":
        request.getfixturevalue("s3_server")
        fs, _ = storage.resolve("s3://commit-test/x")
        if not fs.exists("commit-test"):
            fs.mkdir("commit-test")
        uri = f"s3://commit-test/{request.node.name.replace('[', '-').replace(']', '')}"
        fs, path = storage.resolve(uri)
        if fs.exists(path):
            fs.rm(path, recursive=True)
        return fs, uri, path
    uri = str(tmp_path / "out")
    fs, path = storage.resolve(uri)
    return fs, uri, path


def names(fs, path: str) -> list[str]:
    fs.invalidate_cache(path)
    return sorted(posixpath.basename(p) for p in fs.ls(path, detail=False))


ROUNDS = 3


def _race(uri: str, who: int, barrier, results) -> None:
    fs, path = storage.resolve(uri)
    for round_ in range(ROUNDS):
        barrier.wait()  # both writers start each round together
        shard = storage.join(path, f"part-race{round_}.parquet")
        results[(round_, who)] = storage.write_parquet_atomic(fs, shard, table(f"w{who}-", 4 + who), SCHEMA)


def test_two_processes_racing_for_a_shard_leave_one_committed_copy(where):
    fs, uri, path = where
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(2), manager.dict()
        procs = [ctx.Process(target=_race, args=(uri, who, barrier, results)) for who in (0, 1)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
        results = dict(results)
    for round_ in range(ROUNDS):
        won = [who for who in (0, 1) if results[(round_, who)]]
        assert len(won) == 1, results
        record = json.loads(fs.cat_file(storage.commit_path(path, f"part-race{round_}")))
        back = pq.read_table(fs.open(storage.join(path, record["file"]), "rb"))
        assert back.num_rows == record["rows"] == 4 + won[0]  # the winner's rows, whole
        assert back["id"][0].as_py().startswith(f"w{won[0]}-")
    # one file per shard: each loser removed its copy
    assert [n for n in names(fs, path) if n.startswith("part-")] == sorted(
        json.loads(fs.cat_file(storage.commit_path(path, f"part-race{r}")))["file"] for r in range(ROUNDS)
    )
    assert len(storage.committed_files(fs, path)) == ROUNDS


def test_readers_trust_commit_records_only(where):
    from tribunal.jobs.pipeline.outputs import OutputDir

    fs, uri, path = where
    out = OutputDir(uri)
    out.prepare_run({"a": 1})
    assert out.parts() == [] and len(out.done_ids()) == 0  # marked: an empty committed output
    assert storage.write_parquet_atomic(fs, storage.join(path, "part-a.parquet"), table("a"), SCHEMA)
    # a file an attempt placed but never committed (killed between upload and record)
    with fs.open(storage.join(path, "part-b.0123456789ab.parquet"), "wb") as f:
        pq.write_table(table("b"), f)
    assert [posixpath.basename(p) for p in out.parts()] == [posixpath.basename(storage.committed_files(fs, path)[0])]
    assert sorted(out.done_ids().to_pylist()) == ["a0", "a1", "a2"]
    assert storage.list_parquet(fs, path, "trajectories") == out.parts()  # reducers' and training's listing
    out.prepare_run({"a": 1})  # the next run's start removes what no record names
    assert [n for n in names(fs, path) if n.startswith("part-")] == [posixpath.basename(out.parts()[0])]


def test_merging_committed_files_is_exact_idempotent_and_crash_safe(where):
    from tribunal.jobs.pipeline.outputs import OutputDir

    fs, uri, path = where
    out = OutputDir(uri)
    out.prepare_run({})
    for i in range(7):
        assert storage.write_parquet_atomic(fs, storage.join(path, f"part-s{i}.parquet"), table(f"s{i}-"), SCHEMA)
    before = out.read(out.parts()).sort_by("id")
    size = sum(r["bytes"] for r in storage.commit_records(fs, path)[0])
    assert out.roll(10 * size) == 0  # mid-run: nothing reaches the target yet
    # A merge killed after its record was committed, before it retired its inputs: readers see
    # the merged file only; the next start removes the rest.
    live = storage.commit_records(fs, path)[0]
    first = live[:3]
    w = storage.ParquetShardWriter(fs, storage.join(path, "part-mkilled.parquet"), SCHEMA)
    for r in first:
        w.write(pq.read_table(fs.open(storage.join(path, r["file"]), "rb")))
    assert w.close(replaces=tuple(r["shard"] for r in first))
    assert len(out.parts()) == 5 and out.read(out.parts()).sort_by("id").equals(before)
    out.prepare_run({})
    assert len([n for n in names(fs, path) if n.startswith("part-")]) == 5
    assert out.roll(10 * size, final=True) == 1  # the end of a run (and compact): one file
    assert len(out.parts()) == 1 and out.read(out.parts()).sort_by("id").equals(before)
    assert out.roll(10 * size, final=True) == 0  # idempotent
    assert [n for n in names(fs, path) if n.startswith("part-")] == [posixpath.basename(out.parts()[0])]
    assert [n for n in names(fs, storage.join(path, storage.COMMITS))] == [storage.LAYOUT, posixpath.basename(out.parts()[0]).split(".")[0] + ".json"]


def test_an_output_without_commit_records_is_read_and_adopted(tmp_path):
    from tribunal.jobs.pipeline.outputs import OutputDir

    d = tmp_path / "old"
    d.mkdir()
    for name in ("part-1.parquet", "part-2.parquet"):
        pq.write_table(table(name[5]), d / name)
    (d / "_run.json").write_text(json.dumps({"settings": {"a": 1}, "run_id": "x"}))
    out = OutputDir(str(d))
    assert [os.path.basename(p) for p in out.parts()] == ["part-1.parquet", "part-2.parquet"]  # the legacy path
    done = out.prepare({"a": 1})  # a resumed run adopts them: one record each
    assert sorted(done.to_pylist()) == ["10", "11", "12", "20", "21", "22"]
    assert sorted(os.listdir(d / storage.COMMITS)) == [storage.LAYOUT, "part-1.json", "part-2.json"]
    assert [os.path.basename(p) for p in out.parts()] == ["part-1.parquet", "part-2.parquet"]
