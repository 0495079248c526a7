"""Atomic shard writes, locally and on S3 (a real S3-protocol server on loopback)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.cluster import storage
from tribunal.schemas.errors import TribunalError

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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on return: nothing listens there


@pytest.fixture
def no_aws(monkeypatch, tmp_path):
    """An environment where botocore finds no credentials: no AWS_* variables, no ~/.aws, no
    instance metadata."""
    import os

    for name in list(os.environ):
        if name.startswith("AWS_") or name == "TRIBUNAL_STORAGE_OPTIONS":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(storage, "_checked", set())


def test_no_credentials_is_one_line_naming_the_path_endpoint_and_settings(no_aws, s3_server, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    with pytest.raises(TribunalError) as e:
        storage.resolve("s3://my-bucket/samples")
    assert str(e.value) == (
        f"s3://my-bucket/samples: no S3 credentials (endpoint {s3_server}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
        "(or AWS_PROFILE), and AWS_ENDPOINT_URL for a non-AWS endpoint"
    )


def test_an_unreachable_endpoint_fails_within_the_budget(no_aws, monkeypatch):
    import time

    endpoint = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret-key")
    monkeypatch.setenv(storage.S3_CONNECT_TIMEOUT_ENV, "2")
    start = time.monotonic()
    with pytest.raises(TribunalError, match=rf"^s3://b/x: cannot reach the S3 endpoint {endpoint} \(connection refused\) after [0-9]+ tr(?:y|ies) in [0-9.]+s: check AWS_ENDPOINT_URL") as e:
        storage.resolve("s3://b/x")
    assert time.monotonic() - start < 10, str(e.value)  # 2 s of tries, plus the last one (botocore took ~35 s a call)
    monkeypatch.setenv(storage.S3_CONNECT_TIMEOUT_ENV, "0")  # 0: no check (the job's own calls then retry)
    storage.resolve("s3://b/x")


def test_a_store_that_answers_passes_once_per_process(s3_server, monkeypatch):
    monkeypatch.setattr(storage, "_checked", set())
    fs, path = storage.resolve("s3://no-such-bucket-here/x")  # an answer, even "no such bucket", passes
    assert path == "no-such-bucket-here/x" and len(storage._checked) == 1
    storage.resolve("s3://no-such-bucket-here/y")
    assert len(storage._checked) == 1
