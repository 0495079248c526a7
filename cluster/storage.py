"""Filesystems for local paths and ``s3://`` (through s3fs), and atomic shard writes.

S3 settings come from the environment (``storage_options_from_env``): ``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY`` (or ``AWS_PROFILE``, or any credential botocore finds),
``AWS_ENDPOINT_URL`` for a non-AWS store (MinIO, Ceph ...), and ``TRIBUNAL_STORAGE_OPTIONS`` (JSON
s3fs options) for anything else.

The first time a process resolves an ``s3://`` path of a bucket, it checks that credentials exist
and that the endpoint answers, trying again for at most ``TRIBUNAL_S3_CONNECT_TIMEOUT_S`` seconds
(default 5; 0 skips the check). A store that is down or misnamed, or missing credentials, is then
one line within seconds naming the path, the endpoint and what to set, instead of a minute of
botocore's retries and its exception's name. Once a store has answered, requests keep botocore's
retries (``S3_RETRIES``), which ride out throttling and short outages mid-run.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import time
import uuid
from typing import Any

from tribunal.cluster.names import check_file_name
from tribunal.schemas.errors import TribunalError


S3_RETRIES: dict[str, Any] = {
    # botocore's own retries (throttling 503 SlowDown, 500s, connection errors) with backoff...
    "config_kwargs": {"retries": {"max_attempts": 8, "mode": "standard"}, "connect_timeout": 10, "read_timeout": 60},
}
"""Retries on every S3 filesystem tribunal makes (``TRIBUNAL_STORAGE_OPTIONS`` can override);
recorded in each manifest (``storage_settings``)."""


def storage_settings(fs) -> dict[str, Any]:
    """What a manifest records about the storage: the protocol and, off the local disk, the
    retry settings the filesystem runs with."""
    if is_local(fs):
        return {"protocol": "file"}
    kwargs = getattr(fs, "storage_options", {}) or {}
    return {
        "protocol": fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol,
        "config_kwargs": kwargs.get("config_kwargs"),
        # s3fs retries around botocore's (SlowDown and connection errors), with its own backoff
        "s3fs_retries": getattr(fs, "retries", None),
    }


def storage_options_from_env() -> dict[str, Any]:
    """s3fs options from the environment: ``AWS_ENDPOINT_URL`` points at any S3-protocol server."""
    opts: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        opts["endpoint_url"] = endpoint
    # Credentials given in the driver's environment travel inside the pickled filesystem, so
    # Ray workers (whose environment may differ) reach the same store.
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"] = os.environ["AWS_ACCESS_KEY_ID"]
        opts["secret"] = os.environ["AWS_SECRET_ACCESS_KEY"]
    opts.update(copy.deepcopy(S3_RETRIES))  # botocore rewrites the retries dict it is given
    extra = os.environ.get("TRIBUNAL_STORAGE_OPTIONS")
    if extra:
        opts.update(json.loads(extra))
    return opts


def resolve(uri: str, storage_options: dict[str, Any] | None = None):
    """``(fsspec filesystem, path without scheme)`` for a local path or a remote URI. An ``s3://``
    URI's store is checked once per process (``check_s3``)."""
    import fsspec

    if "://" not in uri:
        return fsspec.filesystem("file"), os.path.abspath(uri)
    protocol = uri.split("://", 1)[0]
    opts = storage_options_from_env() if storage_options is None else storage_options
    if protocol not in ("s3", "s3a"):
        opts = {}
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    if protocol in ("s3", "s3a"):
        check_s3(fs, path, uri)
    return fs, path


S3_CONNECT_TIMEOUT_ENV = "TRIBUNAL_S3_CONNECT_TIMEOUT_S"
DEFAULT_S3_CONNECT_TIMEOUT_S = 5.0
AWS_DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
CREDENTIALS_HINT = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for a non-AWS endpoint"
_checked: set[tuple] = set()  # (bucket, options) whose store answered in this process


def _s3_connect_timeout() -> float:
    raw = os.environ.get(S3_CONNECT_TIMEOUT_ENV)
    try:
        return float(raw) if raw else DEFAULT_S3_CONNECT_TIMEOUT_S
    except ValueError:
        raise TribunalError(f"{S3_CONNECT_TIMEOUT_ENV}={raw!r}: not a number of seconds") from None


def s3_endpoint(fs) -> str:
    """The endpoint an s3fs filesystem talks to, as the user would set it (no credentials)."""
    from tribunal.cluster.redact import scrub_url

    opts = getattr(fs, "storage_options", {}) or {}
    url = opts.get("endpoint_url") or (opts.get("client_kwargs") or {}).get("endpoint_url") or AWS_DEFAULT_ENDPOINT
    return scrub_url(str(url)).rstrip("/")


def _why_unreachable(e: BaseException) -> str:
    """A few words for a connection failure, from the exception and the ones it wraps."""
    import socket

    seen: list[BaseException] = []
    while e is not None and e not in seen:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for x in seen:
        if isinstance(x, ConnectionRefusedError):
            return "connection refused"
        if isinstance(x, socket.gaierror):
            host = next((h for h in (getattr(y, "host", None) for y in seen) if isinstance(h, str) and h), None)
            return f"cannot resolve {host}" if host else "cannot resolve the host name"
        if isinstance(x, (TimeoutError, socket.timeout)) or "timeout" in type(x).__name__.lower():
            return "timed out"
        if "ssl" in type(x).__name__.lower():
            return f"TLS error: {str(x).splitlines()[0][:120] if str(x) else type(x).__name__}"
    first = seen[0]
    if type(first).__name__ == "EndpointConnectionError":  # its text only repeats the URL
        return "no connection"
    return (str(first).splitlines()[0] if str(first) else type(first).__name__)[:160]


def is_connection_error(e: BaseException) -> bool:
    """Whether ``e`` means the S3 endpoint could not be reached (as opposed to an answer)."""
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError
    except ImportError:  # no botocore: no S3 either
        return False
    import asyncio

    return isinstance(e, (BotoConnectionError, HTTPClientError, ConnectionError, TimeoutError, asyncio.TimeoutError)) or type(e).__name__ == "FSTimeoutError"


def is_credentials_error(e: BaseException) -> bool:
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError, ProfileNotFound
    except ImportError:
        return False
    return isinstance(e, (NoCredentialsError, PartialCredentialsError, ProfileNotFound))


REFUSED_CREDENTIALS = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired")


def check_s3(fs, path: str, uri: str | None = None) -> None:
    """Raise a one-line TribunalError unless the store behind ``fs`` has credentials and answers.

    One request (``ListObjectsV2`` of one key under ``path``), made through a copy of ``fs`` that
    botocore does not retry; connection failures are tried again, with backoff, for at most
    ``TRIBUNAL_S3_CONNECT_TIMEOUT_S`` seconds. Any answer from the store (even "no such bucket"
    or "access denied") passes: the job's own reads say what is wrong with the path.
    """
    budget = _s3_connect_timeout()
    if budget <= 0:
        return
    opts = dict(getattr(fs, "storage_options", {}) or {})
    if opts.get("anon"):
        return
    bucket, _, key = path.partition("/")
    marker = (bucket, json.dumps(opts, sort_keys=True, default=str))
    if marker in _checked:
        return
    where = uri or display(fs, path)
    endpoint = s3_endpoint(fs)
    config = copy.deepcopy(opts.get("config_kwargs") or {})
    per_try = min(budget, 2.0)
    config.update({"retries": {"max_attempts": 1, "mode": "standard"}, "connect_timeout": per_try, "read_timeout": max(budget, 2.0)})
    probe = type(fs)(**{**opts, "config_kwargs": config, "skip_instance_cache": True})
    probe.retries = 1  # s3fs's own retry loop around botocore's
    start, tries = time.monotonic(), 0
    while True:
        tries += 1
        try:
            probe.call_s3("list_objects_v2", Bucket=bucket, Prefix=key, MaxKeys=1)
            break
        except Exception as e:  # noqa: BLE001 - sorted below: no credentials, unreachable, or an answer
            if is_credentials_error(e):
                raise TribunalError(f"{where}: no S3 credentials (endpoint {endpoint}): {CREDENTIALS_HINT}") from None
            if not is_connection_error(e):
                code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code") if e.__cause__ is not None else None
                if code in REFUSED_CREDENTIALS:
                    raise TribunalError(
                        f"{where}: the S3 endpoint {endpoint} refused the credentials ({code}): "
                        "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and AWS_ENDPOINT_URL"
                    ) from None
                break  # the store answered: the path's own problems are the job's to report
            waited = time.monotonic() - start
            pause = min(0.25 * 2 ** (tries - 1), budget - waited)
            if pause <= 0.05:
                raise TribunalError(
                    f"{where}: cannot reach the S3 endpoint {endpoint} ({_why_unreachable(e)}) after {tries} "
                    f"{'try' if tries == 1 else 'tries'} in {waited:.1f}s: check AWS_ENDPOINT_URL and that the store is up "
                    f"({S3_CONNECT_TIMEOUT_ENV} sets how long to try)"
                ) from None
            time.sleep(pause)
    _checked.add(marker)


def describe_storage_error(e: BaseException) -> str | None:
    """One line for an S3 failure that reached the top of a job after the first contact (the
    store went away mid-run, a worker without credentials), or None for other exceptions."""
    if is_credentials_error(e):
        return f"no S3 credentials: {CREDENTIALS_HINT}"
    try:
        from botocore.exceptions import BotoCoreError
    except ImportError:
        return None
    if isinstance(e, BotoCoreError) and is_connection_error(e):
        from urllib.parse import urlsplit

        url = urlsplit(str(getattr(e, "kwargs", {}).get("endpoint_url") or ""))
        what = f" {url.scheme}://{url.hostname}{f':{url.port}' if url.port else ''}" if url.hostname else ""
        return f"lost the S3 endpoint{what} ({_why_unreachable(e)}) after retries: re-run the same command to resume once it answers"
    return None


def is_local(fs) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def arrow_filesystem(fs):
    """A pyarrow filesystem over an fsspec one (what Ray Data's readers take)."""
    import pyarrow.fs as pafs

    if is_local(fs):
        return pafs.LocalFileSystem()
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs))


def list_parquet(fs, path: str, what: str = "input") -> list[str]:
    """The Parquet files of a file or directory path, sorted; a one-line error when there are none."""
    if not fs.exists(path):
        raise TribunalError(f"{what} not found: {path}")
    if fs.isfile(path):
        return [path]
    if has_commit_layout(fs, path):  # a tribunal output: its committed files only
        files = committed_files(fs, path)
        if not files:
            raise TribunalError(f"{what} has no committed .parquet files: {path}")
        return files
    files = sorted(
        p
        for p in fs.find(path)
        if p.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in p[len(path) :].split("/"))
    )
    if not files:
        raise TribunalError(f"{what} has no .parquet files: {path}")
    return files


def parquet_footer(fs, path: str):
    """The Parquet footer (``FileMetaData``) of one file; a one-line error naming it if unreadable."""
    import pyarrow.parquet as pq

    try:
        with fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).metadata
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        raise TribunalError(f"{display(fs, path)}: not a readable Parquet file ({type(e).__name__}: {e})") from None


PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 1}
"""How every shard is written: zstd at its fastest level. Shards repeat long text (a sample's
context in each of its k trajectories, the prompt template in every SFT row), which zstd's
window finds: the SFT corpus is ~15x smaller than with pyarrow's default snappy, and faster to
write. Any Parquet reader reads it."""


COMMITS = "_commits"
"""Beside the part files of a directory: one commit record per committed file (``<shard>.json``)."""
LAYOUT = "_layout.json"
"""In ``_commits/``: marks a directory written with commit records (even one with none yet)."""
ROW_GROUP_BYTES = 64 << 20
"""Merged files are written in row groups of about this many (Arrow, uncompressed) bytes."""


def create_if_absent(fs, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists, atomically; whether this call created it.

    Local: the bytes go to a temporary file that is hard-linked to ``path`` (``link`` fails if the
    name exists, and the name never shows a partial file). S3: a conditional PUT
    (``If-None-Match: *``), answered 412 when the key exists.
    """
    parent = posixpath.dirname(path)
    if is_local(fs):
        os.makedirs(parent, exist_ok=True)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:  # no fsync: safe against a killed process (what resume is
            f.write(data)  # for), like the data files; an fsync cost 150 ms a record on a busy disk
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)
    try:
        fs.pipe_file(path, data, mode="create")
        return True
    except FileExistsError:
        return False
    finally:
        fs.invalidate_cache(parent)


def commit_path(directory: str, shard: str) -> str:
    return posixpath.join(directory, COMMITS, f"{shard}.json")


def commit(fs, directory: str, shard: str, file: str, **meta) -> bool:
    """Record ``file`` (a name in ``directory``) as the one committed copy of ``shard``.

    Returns False when another writer committed the shard first (its copy stands). A retried
    conditional PUT whose first try reached the store finds its own record: that counts as won.
    """
    attempt = uuid.uuid4().hex
    record = {"shard": shard, "file": file, "attempt": attempt, "committed_at": time.time(), **meta}
    path = commit_path(directory, shard)
    if create_if_absent(fs, path, json.dumps(record).encode()):
        return True
    try:
        return json.loads(fs.cat_file(path)).get("attempt") == attempt
    except FileNotFoundError:
        return False


def mark_committed_layout(fs, directory: str) -> None:
    """Mark ``directory`` as written with commit records (readers then trust the records only)."""
    path = posixpath.join(directory, COMMITS, LAYOUT)
    if not fs.exists(path):
        write_text_atomic(fs, path, json.dumps({"layout": "commit-records", "version": 1}))


def has_commit_layout(fs, directory: str) -> bool:
    """Whether ``directory`` is written with commit records: it has ``_commits/`` (a record, or
    the layout mark a run's start leaves in an output with none yet)."""
    fs.invalidate_cache(directory)
    return fs.exists(posixpath.join(directory, COMMITS))


def commit_records(fs, directory: str) -> tuple[list[dict], list[dict]]:
    """``(live, dead)`` commit records of a directory: a record is dead once a committed record
    replaces it (a merged file), live otherwise."""
    where = posixpath.join(directory, COMMITS)
    fs.invalidate_cache(where)
    if not fs.exists(where):
        return [], []
    paths = [p for p in fs.ls(where, detail=False) if p.endswith(".json") and not posixpath.basename(p).startswith(("_", "."))]
    if not paths:
        return [], []
    texts = fs.cat(paths) if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
    records = []
    for p in paths:
        try:
            records.append(json.loads(texts[p]))
        except (ValueError, KeyError):  # a record is created whole; a bad one is someone else's file
            raise TribunalError(f"{display(fs, p)}: not a commit record (unreadable JSON)") from None
    replaced = {s for r in records for s in r.get("replaces", ())}
    live = sorted((r for r in records if r["shard"] not in replaced), key=lambda r: r["shard"])
    dead = [r for r in records if r["shard"] in replaced]
    return live, dead


def committed_files(fs, directory: str) -> list[str]:
    """The committed part files of an output directory: the files its live commit records name.

    A directory without commit records (written by an older tribunal) is read the legacy way:
    its ``part-*.parquet`` files.
    """
    if not has_commit_layout(fs, directory):
        fs.invalidate_cache(directory)
        if not fs.exists(directory):
            return []
        return sorted(p for p in fs.ls(directory, detail=False) if posixpath.basename(p).startswith("part-") and p.endswith(".parquet"))
    return [posixpath.join(directory, r["file"]) for r in commit_records(fs, directory)[0]]


def remove_garbage(fs, directory: str) -> int:
    """Remove what no live commit record names: dead records and their files, part files of
    attempts that never committed, temporaries. Only while no writer runs (a run's start, compact).
    Returns how many files went."""
    if not fs.exists(directory):
        return 0
    removed = clean_temporaries(fs, directory)
    if not has_commit_layout(fs, directory):
        return removed
    live, dead = commit_records(fs, directory)
    named = {r["file"] for r in live}
    fs.invalidate_cache(directory)
    present = set()
    for p in fs.ls(directory, detail=False):
        name = posixpath.basename(p)
        present.add(name)
        if name.startswith("part-") and name.endswith(".parquet") and name not in named:
            fs.rm(p)
            removed += 1
    # A record whose file was deleted by hand (a lost shard): dropped, so the run redoes its rows.
    dead = dead + [r for r in live if r["file"] not in present]
    for r in dead:
        fs.rm(commit_path(directory, r["shard"]))
        removed += 1
    return removed


def retire(fs, directory: str, records: list[dict]) -> None:
    """Delete replaced records, then their files (after the record that replaces them is
    committed): what a record replaces goes before it, so no stale record comes back to life."""
    for r in records:
        for s in r.get("replaces", ()):
            _rm_quiet(fs, commit_path(directory, s))
        _rm_quiet(fs, commit_path(directory, r["shard"]))
        _rm_quiet(fs, posixpath.join(directory, r["file"]))


def _rm_quiet(fs, path: str) -> None:
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


class ParquetShardWriter:
    """One Parquet file written row group by row group and committed when closed, so a large
    shard never has to be in memory at once.

    ``path`` names the shard (``DIR/part-<x>.parquet``); the bytes go to a file of this attempt
    (``part-<x>.<attempt>.parquet``), written whole (locally a temporary file renamed; on S3 a
    local temporary file uploaded once closed, never an open remote handle an exception could
    publish), then a commit record ``DIR/_commits/part-<x>.json`` names it, created only if
    absent. Two writers of the same shard: one record, the loser deletes its copy.

    ``replace=True``: the caller is the shard's only writer and its file keeps the shard's own
    name (``part-<x>.parquet``, a name users point other tools at), replacing an earlier copy and
    its record (a reducer's re-run, ``export``).

    ``options`` go to ``pyarrow.parquet.ParquetWriter`` over ``PARQUET_OPTIONS``.
    """

    def __init__(self, fs, path: str, schema, replace: bool = False, *, external: bool = False, **options):
        """``external=True``: the caller writes the whole file to ``temp_path`` itself (another
        Parquet writer) and sets ``rows``; ``close()`` publishes it as usual."""
        import pyarrow.parquet as pq

        options = {**PARQUET_OPTIONS, **options}
        check_file_name(path)
        self.fs, self.schema = fs, schema
        self.dir, name = posixpath.split(path)
        self.shard = name[: -len(".parquet")] if name.endswith(".parquet") else name
        self.replace = replace
        self.file = name if replace else f"{self.shard}.{uuid.uuid4().hex[:12]}.parquet"
        self.path = posixpath.join(self.dir, self.file)  # where the bytes land, once committed
        fs.makedirs(self.dir, exist_ok=True)
        self.rows = 0
        self.bytes = 0  # the file's size, once closed
        if is_local(fs):
            self._tmp = posixpath.join(self.dir, f".tmp-{uuid.uuid4().hex}-{self.file}")
        else:
            import tempfile

            fd, self._tmp = tempfile.mkstemp(prefix="tribunal-", suffix=".parquet")
            os.close(fd)
        self._writer = None if external else pq.ParquetWriter(self._tmp, schema, **options)

    @property
    def temp_path(self) -> str:
        """Where the bytes are written before they are published (a local path)."""
        return self._tmp

    def write(self, table) -> None:
        if len(table):
            self._writer.write_table(table.cast(self.schema))
            self.rows += len(table)

    def close(self, publish: bool = True, publish_if=None, replaces: tuple[str, ...] = ()) -> bool:
        """Finish the file and commit it, or (``publish=False``, an empty file, ``publish_if()``
        False once the file is in place, or another writer's commit first) throw it away.
        Returns whether this copy is the committed one."""
        if self._writer is not None:
            self._writer.close()
        try:
            if not (publish and self.rows):
                return False
            size = self.bytes = os.path.getsize(self._tmp)
            if is_local(self.fs):
                os.replace(self._tmp, self.path)
            else:
                upload(self.fs, self._tmp, self.path, size)
            if self.replace:
                record = {"shard": self.shard, "file": self.file, "attempt": uuid.uuid4().hex, "rows": self.rows, "bytes": size}
                write_text_atomic(self.fs, commit_path(self.dir, self.shard), json.dumps(record))
                return True
            try:
                won = (publish_if is None or publish_if()) and commit(
                    self.fs, self.dir, self.shard, self.file, rows=self.rows, bytes=size, replaces=list(replaces)
                )
            except OSError as e:
                raise TribunalError(f"{display(self.fs, commit_path(self.dir, self.shard))}: could not commit ({type(e).__name__}: {e})") from None
            if won:
                return True
            _rm_quiet(self.fs, self.path)
            return False
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)


UPLOAD_CHUNK = 50 << 20
"""Uploads larger than about twice this go as multipart uploads of parts this size."""


def upload(fs, local: str, path: str, size: int) -> None:
    """Upload a finished local file to ``path`` (a key no other writer uses) in one call.

    An upload that reached the store while the client saw an error (a PUT or a
    CompleteMultipartUpload whose answer was lost; its retry then fails) is recognised by the
    object being there with the full size. Anything else: one line naming the key.
    """
    try:
        fs.put_file(local, path, chunksize=UPLOAD_CHUNK)
        return
    except Exception as e:  # noqa: BLE001 - checked against the store below
        error = e
    try:
        fs.invalidate_cache(path)
        if fs.exists(path) and fs.size(path) == size:
            return
    except Exception:  # noqa: BLE001 - the store is unreachable: report the upload's own error
        pass
    raise TribunalError(f"{display(fs, path)}: upload failed after retries ({type(error).__name__}: {error})") from None


def write_parquet_atomic(fs, path: str, table, schema, publish_if=None, replace: bool = False) -> bool:
    """Write one Parquet file (non-empty ``table``) as a committed shard (``ParquetShardWriter``):
    readers see all of it or none of it. ``publish_if``: a check made when the file is complete,
    just before it is committed; if it returns False the file is thrown away. Returns whether the
    file was committed (False too when another writer committed the same shard first).
    """
    writer = ParquetShardWriter(fs, path, schema, replace=replace)
    try:
        writer.write(table)
    except BaseException:
        writer.close(publish=False)
        raise
    return writer.close(publish_if=publish_if)


def plan_merges(records: list[dict], target_bytes: int, final: bool) -> list[list[dict]]:
    """Groups of committed files to merge into files of about ``target_bytes``: first fit by
    decreasing size over the files under the target. Mid-run (``final=False``) only groups that
    reach the target; at the end (and in ``compact``) every group of two or more."""
    small = sorted((r for r in records if r.get("bytes", 0) < target_bytes), key=lambda r: (-r.get("bytes", 0), r["shard"]))
    groups: list[list[dict]] = []
    sizes: list[int] = []
    for r in small:
        b = r.get("bytes", 0)
        for i, s in enumerate(sizes):
            if s + b <= target_bytes:
                groups[i].append(r)
                sizes[i] += b
                break
        else:
            groups.append([r])
            sizes.append(b)
    if final:
        return [g for g in groups if len(g) > 1]
    return [g for g, s in zip(groups, sizes) if len(g) > 1 and s >= 0.9 * target_bytes]


def merge(fs, directory: str, group: list[dict], row_group_bytes: int = ROW_GROUP_BYTES) -> bool:
    """Merge committed files into one committed file that replaces them, streaming row groups
    (memory: one input batch plus one output row group). The merged shard's name is a hash of
    the shards it replaces, so two processes merging the same group commit one copy. Returns
    whether this call's merge is the committed one."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    shards = sorted(r["shard"] for r in group)
    name = "part-m" + hashlib.blake2b("\x1f".join(shards).encode(), digest_size=8).hexdigest() + ".parquet"
    first = posixpath.join(directory, group[0]["file"])
    with fs.open(first, "rb") as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    writer = ParquetShardWriter(fs, posixpath.join(directory, name), schema)
    try:
        buf, size = [], 0
        for r in sorted(group, key=lambda r: r["shard"]):
            with fs.open(posixpath.join(directory, r["file"]), "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=65_536):
                    buf.append(batch)
                    size += batch.nbytes
                    if size >= row_group_bytes:  # one chunk a row group: 2x faster to encode than many
                        writer.write(pa.Table.from_batches(buf, schema).combine_chunks())
                        buf, size = [], 0
        if buf:
            writer.write(pa.Table.from_batches(buf, schema).combine_chunks())
    except BaseException:
        writer.close(publish=False)
        raise
    won = writer.close(replaces=tuple(shards))
    retire(fs, directory, group)  # replaced either way: by this copy or by the one that won
    return won


def write_text_atomic(fs, path: str, text: str) -> None:
    check_file_name(path)
    parent = posixpath.dirname(path)
    fs.makedirs(parent, exist_ok=True)
    if is_local(fs):
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, text.encode("utf-8"))  # one PUT of the whole text, never an open handle


def join(base: str, *parts: str) -> str:
    return posixpath.join(base, *parts)


def display(fs, path: str) -> str:
    """The path as the user would write it (with its scheme)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def clean_temporaries(fs, path: str) -> int:
    """Remove temporary files a killed run left behind; returns how many."""
    if not fs.exists(path):
        return 0
    stale = [p for p in fs.find(path) if posixpath.basename(p).startswith(".tmp-")]
    for p in stale:
        fs.rm(p)
    return len(stale)
