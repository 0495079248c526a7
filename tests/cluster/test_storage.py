"""Atomic shard writes, locally and on S3 (a real S3-protocol server on loopback)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.cluster import storage

TABLE = pa.table({"id": ["a", "b"], "x": [1, 2]})


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_shard_is_published_whole_or_not_at_all(where, tmp_path, request):
    if where == "s3":
        import s3fs

        endpoint = request.getfixturevalue("s3_server")
        fs, root = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, key="testing", secret="testing"), "storage-test"
        fs.mkdir(root)
    else:
        import fsspec

        fs, root = fsspec.filesystem("file"), str(tmp_path)
    kept, dropped = storage.join(root, "part-kept.parquet"), storage.join(root, "part-dropped.parquet")
    assert storage.write_parquet_atomic(fs, kept, TABLE, TABLE.schema)
    assert not storage.write_parquet_atomic(fs, dropped, TABLE, TABLE.schema, publish_if=lambda: False)
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    (committed,) = storage.committed_files(fs, root)  # the file the commit record names
    assert names == ["_commits", committed.rsplit("/", 1)[-1]]  # no temporary, no dropped attempt
    assert committed.rsplit("/", 1)[-1].startswith("part-kept.")
    with fs.open(committed, "rb") as f:
        back = pq.read_table(f)
    assert back.equals(TABLE)
    assert pq.ParquetFile(fs.open(committed, "rb")).metadata.row_group(0).column(0).compression == "ZSTD"
