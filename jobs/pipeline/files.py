"""Parquet files for the CPU reducers: chunking inputs by rows, threads that overlap reading,
preparing and writing, and stream-filtering Parquet files by key into one committed shard.

- ``chunk_files``: group input files into chunks of about N rows (from the footers), so a
  reducer holds one chunk at a time whatever the data size.
- ``Lanes`` (with ``prefetch`` and ``bounded_map``): single-thread executors by name for a driver
  loop that reads the next chunk, prepares the next block and writes the previous one at the same
  time (polars, Arrow and Parquet release the GIL), with a bounded number of results alive.
- ``stream_filter_by_key``: the rows of some files whose key is in a set, in input order, with
  the input's own Arrow schema, into one committed shard (``storage.ParquetShardWriter``).
"""

from __future__ import annotations

import functools
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa


def chunk_files(fs, files: list[str], chunk_rows: int) -> list[list[str]]:
    """Group files into chunks of about ``chunk_rows`` rows (from Parquet footers); a file is never
    split, so a chunk holds at least one file."""
    import pyarrow.parquet as pq

    chunks, cur, rows = [], [], 0
    for f in files:
        with fs.open(f, "rb") as fh:
            n = pq.ParquetFile(fh).metadata.num_rows
        if cur and rows + n > chunk_rows:
            chunks.append(cur)
            cur, rows = [], 0
        cur.append(f)
        rows += n
    if cur:
        chunks.append(cur)
    return chunks


# ------------------------------------------------------------------------------------ threads
def bounded_map(pool: ThreadPoolExecutor, fn: Callable, items: Iterable, ahead: int) -> Iterator:
    """``pool.map`` in order, with at most ``ahead`` results pending (``Executor.map`` submits
    everything at once, so finished slices would pile up in memory)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def prefetch(pool: ThreadPoolExecutor, fn: Callable, items: Iterable) -> Iterator:
    """``fn(item)`` for each item, in order, computed one ahead on ``pool``: the next item starts
    once this one's result is taken, so two results are alive at most (the one the caller holds
    and the one being computed)."""
    it = iter(items)
    end = object()
    nxt = next(it, end)
    upcoming = pool.submit(fn, nxt) if nxt is not end else None
    while upcoming is not None:
        result = upcoming.result()
        nxt = next(it, end)
        upcoming = pool.submit(fn, nxt) if nxt is not end else None
        yield result


class Lanes:
    """Named single-thread executors ("lanes") for a driver loop that overlaps its steps.

    Work given to one lane runs in the order given. ``submit`` queues work whose result the
    driver does not need (a write, a close); ``wait(n)`` waits for the oldest of it until at most
    ``n`` remain outstanding, which bounds how many blocks are alive. Leaving the ``with`` block
    waits for all of it (its errors are raised); leaving it with an exception cancels what is
    queued and waits for what runs, so a failed run writes no more::

        with Lanes("read", "render", "write") as lanes:
            for chunk in lanes.prefetch("read", read, chunks):
                for block in lanes.map("render", render, blocks_of(chunk), ahead=1):
                    lanes.submit("write", write, block)
                    lanes.wait(1)
    """

    def __init__(self, *names: str) -> None:
        self.pools = {name: ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tribunal-{name}") for name in names}
        self.pending: deque[Future] = deque()

    def __enter__(self) -> Lanes:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if kind is None:
            try:
                self.wait(0)
            except BaseException:
                self._stop(cancel=True)
                raise
            self._stop(cancel=False)
        else:
            self._stop(cancel=True)
        return False

    def prefetch(self, lane: str, fn: Callable, items: Iterable) -> Iterator:
        return prefetch(self.pools[lane], fn, items)

    def map(self, lane: str, fn: Callable, items: Iterable, ahead: int) -> Iterator:
        return bounded_map(self.pools[lane], fn, items, ahead)

    def submit(self, lane: str, fn: Callable, *args: Any) -> None:
        self.pending.append(self.pools[lane].submit(fn, *args))

    def wait(self, outstanding: int) -> None:
        """Wait for the oldest submitted work until at most ``outstanding`` remain (raising its error)."""
        while len(self.pending) > outstanding:
            self.pending.popleft().result()

    def _stop(self, cancel: bool) -> None:
        for pool in self.pools.values():
            pool.shutdown(wait=True, cancel_futures=cancel)


# ------------------------------------------------------------------------------------ filtering
def stream_filter_by_key(src_fs, files: list[str], out_fs, shard_path: str, key: str, keys: pl.Series, *,
                         dictionary_columns: tuple[str, ...] = (), batch_rows: int = 1 << 18) -> int:
    """Stream the rows of ``files`` whose ``key`` (cast to string) is in ``keys`` into one shard at
    ``shard_path`` (``ParquetShardWriter`` with ``replace=True``: the shard keeps its name), in
    input order, with the first file's Arrow schema, atomically; returns its rows.

    Local in and out, and types polars writes exactly: polars' streaming engine reads, filters and
    writes in one plan (``_sink``). Otherwise a reader loop hands filtered batches to a writer
    thread, so reading and filtering the next batch overlaps the encoding of this one (both sides
    release the GIL). ``dictionary_columns``: columns worth a Parquet dictionary (nested ones as
    ``col.list.element.field``) for the pyarrow writer; the others are not dictionary-encoded.
    """
    import queue
    import threading

    import polars as pl
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    with src_fs.open(files[0], "rb") as fh:
        schema = pq.ParquetFile(fh).schema_arrow
    wanted = keys.implode()
    keep = pl.col(key).cast(pl.String).is_in(wanted)
    if storage.is_local(src_fs) and storage.is_local(out_fs) and polars_writes_exactly(schema) and _polars_sink_takes_metadata():
        return _sink(files, out_fs, shard_path, keep, schema)
    writer = storage.ParquetShardWriter(out_fs, shard_path, schema, replace=True, write_statistics=False,
                                        use_dictionary=[n for n in dictionary_columns if n.split(".")[0] in schema.names])
    q: queue.Queue = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def write() -> None:
        while (t := q.get()) is not None:
            if not failed:
                try:
                    writer.write(t)
                except BaseException as e:  # noqa: BLE001 - re-raised by the reader
                    failed.append(e)

    thread = threading.Thread(target=write, daemon=True, name="tribunal-filter-writer")
    thread.start()
    try:
        for f in files:
            if failed:
                break
            if storage.is_local(src_fs):
                # polars decodes nested Parquet (the context messages) several times faster than
                # pyarrow here; the kept rows go back to the input's exact Arrow types.
                for df in pl.scan_parquet(f).filter(keep).collect_batches(chunk_size=batch_rows, maintain_order=True):
                    q.put(df.to_arrow().cast(schema))
                continue
            with src_fs.open(f, "rb") as fh:
                for batch in pq.ParquetFile(fh).iter_batches(batch_size=batch_rows):
                    mask = pl.from_arrow(batch.column(key)).cast(pl.String).is_in(wanted).to_arrow()
                    q.put(pa.Table.from_batches([batch.filter(mask)]))
    except BaseException:
        failed.append(None)
        raise
    finally:
        q.put(None)
        thread.join()
        if failed:
            writer.close(publish=False)
    if failed:
        raise failed[0]
    rows = writer.rows
    writer.close()
    return rows


@functools.cache
def _polars_sink_takes_metadata() -> bool:
    """Whether this polars' sink takes file metadata (the input's Arrow schema is stored through it)."""
    import inspect

    import polars as pl

    return "metadata" in inspect.signature(pl.LazyFrame.sink_parquet).parameters


def polars_writes_exactly(schema: pa.Schema) -> bool:
    """Whether polars' Parquet writer stores columns of these Arrow types exactly as pyarrow reads
    them back under the input's own schema: strings, numbers, booleans, and lists and structs of
    them, all nullable (polars writes every column optional)."""
    import pyarrow as pa

    def ok(t: pa.DataType) -> bool:
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return t.value_field.nullable and ok(t.value_type)
        if pa.types.is_struct(t):
            return all(f.nullable and ok(f.type) for f in t)
        return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_floating(t)
                or pa.types.is_boolean(t))

    return all(f.nullable and ok(f.type) for f in schema)


def _sink(files: list[str], out_fs, shard_path: str, keep: pl.Expr, schema: pa.Schema) -> int:
    """Local files: polars' streaming engine reads, filters and writes the kept rows in one plan,
    decoding and encoding on every core (about 1.4x the pyarrow writer thread's speed). Polars
    writes 64-bit string and list offsets; the Parquet bytes do not depend on them, and the
    ``ARROW:schema`` metadata is the input's, so readers get the input's exact types back."""
    import base64

    import polars as pl
    import pyarrow.parquet as pq

    from tribunal.cluster import storage

    writer = storage.ParquetShardWriter(out_fs, shard_path, schema, replace=True, external=True)
    published = False
    try:
        pl.scan_parquet(files).filter(keep).sink_parquet(
            writer.temp_path, compression=storage.PARQUET_OPTIONS["compression"], compression_level=storage.PARQUET_OPTIONS["compression_level"],
            statistics=False, maintain_order=True, metadata={"ARROW:schema": base64.b64encode(schema.serialize().to_pybytes()).decode()},
        )
        writer.rows = pq.ParquetFile(writer.temp_path).metadata.num_rows
        published = True
    finally:
        writer.close(publish=published)
    return writer.rows
