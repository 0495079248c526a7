"""The rank-sharded corpus reader: deterministic, exactly once, resumable (no torch, no Ray).

A corpus is a directory of committed ``part-*.parquet`` files (what ``rft-filter`` writes under
``sft/`` and ``metarm/``), local or ``s3://``. Opening it reads only the Parquet footers: row
counts and row-group sizes come from them, and every file's schema is checked against the columns
the trainer needs (a one-line error naming the file and the column). When the directory has a
``_manifest.json`` with ``rows``, the footers must add up to it (a half-written corpus is refused).

Order of one epoch (a pure function of the footers, the seed and the epoch number, so every rank
computes the same one without talking to the others):

1. the row groups are permuted (seeded by ``(seed, epoch)``);
2. consecutive runs of ``shuffle_window`` row groups form windows; the rows of each window are
   permuted. A rank therefore holds at most two windows of row groups at a time: memory is flat in
   the corpus size, and each row group is read about once per epoch;
3. the order is truncated to a multiple of the global batch (``micro_batch * world *
   grad_accum``). The dropped rows (the tail) are counted and their keys logged; every rank gets
   the same number of steps, so uneven shards can never hang a collective.

4. optional length bucketing (``bucket_window`` = W > 0): the kept order is cut into windows of W
   global batches; within a window the rows are sorted by length (the characters of their
   ``messages``; stable, so ties keep the shuffled order), cut into W batches of similar lengths,
   and the W batches are put in a seeded order (``(seed, epoch, window)``). Each micro-batch then
   pads to a length close to its rows' own. It is still a pure function of the corpus, the seed
   and the epoch, and the dropped tail is the same rows as without it.

Step ``s`` of an epoch covers order positions ``[s*G, (s+1)*G)``; rank ``r`` takes the ``r``-th
contiguous ``micro_batch * grad_accum`` of it and splits it into ``grad_accum`` micro-batches.
``consumed_samples`` (global, over all epochs) fixes the position exactly: a resumed run yields the
same micro-batches as an uninterrupted one from there on.

Also here: ``Prefetch`` (the trainer reads and tokenizes the next steps on a thread while this one
computes), ``write_sft_corpus`` (a small corpus written in code) and ``corpus_template`` (the GRM
template a corpus's manifest names).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from tribunal.cluster import storage
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

MANIFEST = "_manifest.json"


def example_keys(table: pa.Table) -> list[str]:
    """A stable key per corpus row: ``id`` (plus ``#sample_index`` and ``h`` for hinted rows when the
    corpus has those columns: one sample gives several trajectories)."""
    ids = table.column(c.ID).to_pylist()
    if c.SAMPLE_INDEX not in table.column_names:
        return [str(i) for i in ids]
    idx = table.column(c.SAMPLE_INDEX).to_pylist()
    hinted = table.column(c.HINTED).to_pylist() if c.HINTED in table.column_names else [False] * len(ids)
    return [f"{i}#{j}{'h' if h else ''}" for i, j, h in zip(ids, idx, hinted)]


def _key_columns(names: list[str]) -> list[str]:
    return [col for col in (c.ID, c.SAMPLE_INDEX, c.HINTED) if col in names]


def _type_matches(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual.equals(expected):
        return True
    # large/non-large string and list variants, and any integer width for integer targets, read the same
    if pa.types.is_integer(expected) and pa.types.is_integer(actual):
        return True
    if pa.types.is_string(expected) and (pa.types.is_large_string(actual) or pa.types.is_string_view(actual)):
        return True
    if pa.types.is_list(expected) and (pa.types.is_list(actual) or pa.types.is_large_list(actual)):
        return _type_matches(actual.value_type, expected.value_type)
    if pa.types.is_struct(expected) and pa.types.is_struct(actual):
        have = {actual.field(i).name: actual.field(i).type for i in range(actual.num_fields)}
        return all(
            expected.field(i).name in have and _type_matches(have[expected.field(i).name], expected.field(i).type)
            for i in range(expected.num_fields)
        )
    return False


@dataclass(frozen=True)
class Corpus:
    """A committed corpus, known from its footers only."""

    uri: str
    fs: object
    files: tuple[str, ...]
    group_rows: tuple[tuple[int, ...], ...]  # per file, the row count of each row group
    columns: tuple[str, ...]  # the columns a reader loads (the needed ones + the key columns)
    digest: str  # sha256 over file names, row-group sizes and the needed schema: the corpus hash

    @property
    def rows(self) -> int:
        return sum(sum(g) for g in self.group_rows)

    @classmethod
    def open(cls, uri: str, required: Mapping[str, pa.DataType]) -> Corpus:
        """List the committed parts of ``uri`` and check their footers; ``required``: column -> type."""
        fs, path = storage.resolve(uri)
        fs.invalidate_cache(path)
        if not fs.exists(path):
            raise TribunalError(f"corpus not found: {uri}")
        if fs.isfile(path):
            files = [path]
        else:
            files = storage.committed_files(fs, path)  # what the commit records name (part-* of older outputs)
        if not files:
            raise TribunalError(f"corpus has no committed part-*.parquet files: {uri}")
        group_rows, names0 = [], None
        h = hashlib.sha256()
        for f in files:
            where = storage.display(fs, f)
            meta = storage.parquet_footer(fs, f)
            schema = meta.schema.to_arrow_schema()
            for col, typ in required.items():
                if col not in schema.names:
                    raise TribunalError(f"{where}: no {col!r} column (this trainer needs {sorted(required)})")
                if not _type_matches(schema.field(col).type, typ):
                    raise TribunalError(f"{where}: column {col!r} has type {schema.field(col).type}, expected {typ}")
            names0 = names0 or schema.names
            groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
            group_rows.append(groups)
            h.update(f"{f.rsplit('/', 1)[-1]}:{','.join(map(str, groups))};".encode())
        for col in sorted(required):
            h.update(f"{col}:{required[col]};".encode())
        if not fs.isfile(path):
            mpath = storage.join(path, MANIFEST)
            if fs.exists(mpath):
                with fs.open(mpath, "r") as fh:
                    declared = json.load(fh).get("rows")
                total = sum(sum(g) for g in group_rows)
                if declared is not None and int(declared) != total:
                    raise TribunalError(
                        f"{storage.display(fs, mpath)}: declares {declared} rows but the committed parts hold {total}: "
                        "incomplete corpus (re-run the job that wrote it)"
                    )
        columns = tuple(dict.fromkeys([*required, *_key_columns(names0)]))
        return cls(uri, fs, tuple(files), tuple(group_rows), columns, h.hexdigest()[:16])


def epoch_order(group_rows: tuple[tuple[int, ...], ...], seed: int, epoch: int, shuffle_window: int) -> np.ndarray:
    """Global row indices of one epoch, in order (length = corpus rows; see the module docstring)."""
    sizes = np.array([n for g in group_rows for n in g], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, epoch])
    groups = rng.permutation(len(sizes))
    pieces = []
    for w in range(0, len(groups), shuffle_window):
        window = groups[w : w + shuffle_window]
        rows = np.concatenate([np.arange(starts[g], starts[g] + sizes[g]) for g in window])
        pieces.append(rows[rng.permutation(len(rows))])
    return np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


@dataclass(frozen=True)
class MicroBatch:
    """One rank's micro-batch: ``rows`` (the loaded columns) and where it sits in the run."""

    epoch: int
    step: int  # optimizer step within the epoch, 0-based
    micro: int  # micro-batch within the step, 0..grad_accum-1
    consumed_samples: int  # global samples consumed once this step is done
    index: np.ndarray  # global row indices of the rows
    rows: pa.Table


class ShardedReader:
    """One rank's view of a corpus: ``batches(consumed_samples)`` yields its micro-batches."""

    def __init__(
        self,
        corpus: Corpus,
        rank: int,
        world: int,
        micro_batch: int,
        grad_accum: int = 1,
        seed: int = 0,
        shuffle_window: int = 8,
        holdout: float = 0.0,
        log=None,
        bucket_window: int = 0,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world {world}")
        if micro_batch < 1 or grad_accum < 1 or shuffle_window < 1:
            raise ValueError("micro_batch, grad_accum and shuffle_window must be >= 1")
        if bucket_window < 0:
            raise ValueError("bucket_window must be >= 0")
        self.bucket_window = bucket_window
        self.corpus, self.rank, self.world = corpus, rank, world
        self.micro_batch, self.grad_accum, self.seed, self.shuffle_window = micro_batch, grad_accum, seed, shuffle_window
        self.global_batch = micro_batch * world * grad_accum
        # Held-out rows: a fixed seeded draw, the same in every epoch, never trained on.
        held = np.random.default_rng([seed, 2**31 - 1]).permutation(corpus.rows)[: int(round(corpus.rows * holdout))]
        self.holdout_index = np.sort(held)
        self._train_mask = np.ones(corpus.rows, dtype=bool)
        self._train_mask[held] = False
        self.holdout_rows = len(held)
        self.train_rows = corpus.rows - self.holdout_rows
        self.steps_per_epoch = self.train_rows // self.global_batch
        if self.steps_per_epoch == 0:
            raise TribunalError(
                f"{corpus.uri}: {self.train_rows} training rows, fewer than one global batch "
                f"({micro_batch} x {world} ranks x {grad_accum} accumulation = {self.global_batch})"
            )
        self.samples_per_epoch = self.steps_per_epoch * self.global_batch
        self.dropped_per_epoch = self.train_rows - self.samples_per_epoch
        self._log = log
        sizes = [n for g in corpus.group_rows for n in g]
        self._group_of_file = [(fi, gi) for fi, g in enumerate(corpus.group_rows) for gi in range(len(g))]
        self._group_start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self._cache: OrderedDict[int, pa.Table] = OrderedDict()
        self._files: dict[int, object] = {}
        self.groups_read = 0

    # -- positions -------------------------------------------------------------------------------
    def position(self, consumed_samples: int) -> tuple[int, int]:
        """(epoch, step within the epoch) that ``consumed_samples`` points at."""
        if consumed_samples % self.global_batch:
            raise TribunalError(f"consumed_samples={consumed_samples} is not a multiple of the global batch {self.global_batch}")
        return divmod(consumed_samples // self.global_batch, self.steps_per_epoch)

    def order(self, epoch: int) -> np.ndarray:
        """The training rows of ``epoch`` in order (held-out rows left out)."""
        order = epoch_order(self.corpus.group_rows, self.seed, epoch, self.shuffle_window)
        return order[self._train_mask[order]] if self.holdout_rows else order

    def lengths(self, index: np.ndarray) -> np.ndarray:
        """The bucketing key of rows: characters of all their messages' contents."""
        import pyarrow.compute as pc

        col = self._take(index).column(c.MESSAGES).combine_chunks()
        parents = pc.list_parent_indices(col).to_numpy()
        chars = pc.utf8_length(pc.struct_field(pc.list_flatten(col), c.CONTENT)).fill_null(0).to_numpy(zero_copy_only=False)
        return np.bincount(parents, weights=chars, minlength=len(index)).astype(np.int64)

    def bucketed(self, order: np.ndarray, epoch: int, window: int) -> np.ndarray:
        """The kept positions of bucket window ``window`` of ``epoch``: sorted by length, cut into
        global batches, the batches in a seeded order (module docstring, point 4)."""
        per = self.bucket_window * self.global_batch
        lo, hi = window * per, min((window + 1) * per, self.samples_per_epoch)
        idx = order[lo:hi]
        idx = idx[np.argsort(self.lengths(idx), kind="stable")]
        batches = idx.reshape(-1, self.global_batch)
        return batches[np.random.default_rng([self.seed, epoch, window, 1]).permutation(len(batches))].reshape(-1)

    def holdout_batches(self, size: int) -> Iterator[pa.Table]:
        """The held-out rows, ``size`` at a time, in corpus order (every rank reads them all)."""
        for lo in range(0, self.holdout_rows, size):
            yield self._take(self.holdout_index[lo : lo + size])

    def dropped(self, epoch: int) -> list[str]:
        """Keys of the rows the truncation drops in ``epoch`` (the tail of its order)."""
        tail = self.order(epoch)[self.samples_per_epoch :]
        return example_keys(self._take(tail)) if len(tail) else []

    # -- reading ---------------------------------------------------------------------------------
    def _group(self, g: int) -> pa.Table:
        import pyarrow.parquet as pq

        hit = self._cache.get(g)
        if hit is not None:
            self._cache.move_to_end(g)
            return hit
        fi, gi = self._group_of_file[g]
        pf = self._files.get(fi)
        if pf is None:
            # One open file at a time: the reader moves through windows, not files.
            for f in self._files.values():
                f.close()
            self._files.clear()
            pf = self._files[fi] = pq.ParquetFile(self.corpus.fs.open(self.corpus.files[fi], "rb"))
        table = pf.read_row_group(gi, columns=list(self.corpus.columns))
        self.groups_read += 1
        self._cache[g] = table
        while len(self._cache) > 2 * self.shuffle_window:
            self._cache.popitem(last=False)
        return table

    def _take(self, index: np.ndarray) -> pa.Table:
        groups = np.searchsorted(self._group_start, index, side="right") - 1
        parts, where = [], []
        for g in np.unique(groups):
            mine = np.flatnonzero(groups == g)
            parts.append(self._group(int(g)).take(pa.array(index[mine] - self._group_start[g])))
            where.append(mine)
        table = pa.concat_tables(parts)
        back = np.empty(len(index), dtype=np.int64)
        back[np.concatenate(where)] = np.arange(len(index))
        return table.take(pa.array(back))  # the rows in the order asked for

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._cache.clear()

    def batches(self, consumed_samples: int = 0, epochs: int = 1) -> Iterator[MicroBatch]:
        """This rank's micro-batches from ``consumed_samples`` to the end of epoch ``epochs - 1``."""
        epoch, step = self.position(consumed_samples)
        per_rank = self.micro_batch * self.grad_accum
        while epoch < epochs:
            order = self.order(epoch)
            if step == 0 and self.dropped_per_epoch and self._log is not None:
                self._log(epoch, self.dropped(epoch))
            window, part = -1, order
            for s in range(step, self.steps_per_epoch):
                lo = s * self.global_batch + self.rank * per_rank
                if self.bucket_window:
                    if s // self.bucket_window != window:
                        window = s // self.bucket_window
                        part = self.bucketed(order, epoch, window)
                    lo -= window * self.bucket_window * self.global_batch
                mine = part[lo : lo + per_rank]
                done = (epoch * self.steps_per_epoch + s + 1) * self.global_batch
                for m in range(self.grad_accum):
                    index = mine[m * self.micro_batch : (m + 1) * self.micro_batch]
                    yield MicroBatch(epoch, s, m, done, index, self._take(index))
            epoch, step = epoch + 1, 0


def write_sft_corpus(rows: list[dict], out, *, job: str, rows_per_group: int = 256, template: str | None = None):
    """A small SFT corpus built in memory (``rows`` in the ``SFT`` schema), written as a local
    directory the way ``rft-filter`` writes one, ``part-00000.parquet`` and ``_manifest.json`` (with
    the GRM ``template`` the prompts were rendered with, when given: ``train sft`` records it in the
    model it exports), so ``train sft`` reads it like any other; returns the directory."""
    import pathlib

    import pyarrow.parquet as pq

    from tribunal.schemas import arrow

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=arrow.SFT)
    pq.write_table(table, out / "part-00000.parquet", row_group_size=rows_per_group)
    manifest = {"job": job, "rows": table.num_rows, **({"template": template} if template else {})}
    (out / "_manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def corpus_template(uri: str) -> str | None:
    """The GRM template a corpus's prompts were rendered with, as its ``_manifest.json`` says
    (``rft``/``rft-filter``: ``config.template`` as the user gave it, else ``template``, the name it
    resolved to), or None (no manifest, a single file, or no key)."""
    fs, path = storage.resolve(uri)
    mpath = storage.join(path, MANIFEST)
    try:
        if not fs.isdir(path) or not fs.exists(mpath):
            return None
        with fs.open(mpath, "r") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    config = manifest.get("config") if isinstance(manifest.get("config"), dict) else {}
    for value in (config.get("template"), manifest.get("template")):
        if isinstance(value, str) and value:
            return value
    return None


class Prefetch:
    """Iterate ``items`` on a background thread, at most ``ahead`` items ahead; errors re-raised in
    the consumer. ``close()`` stops the thread (it may be reading) before the reader is closed."""

    _DONE = object()

    def __init__(self, items, ahead: int) -> None:
        import queue
        import threading

        self._q: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._items = items
        self._thread = threading.Thread(target=self._work, daemon=True, name="tribunal-prefetch")
        self._thread.start()

    def _work(self) -> None:
        try:
            for item in self._items:
                if self._stop.is_set():
                    return
                self._q.put(item)
            self._q.put(self._DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._q.put(e)

    def __iter__(self):
        while True:
            item = self._q.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        import queue

        self._stop.set()
        while self._thread.is_alive():
            try:
                self._q.get(timeout=0.05)  # unblock a pending put
            except queue.Empty:
                pass
        self._thread.join()
