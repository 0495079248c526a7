"""Output directories: committed Parquet files, a run record for safe resume, quarantine, the manifest.

Layout of a job's output directory ``OUT``::

    OUT/part-<shard>.<attempt>.parquet  the rows (schema given to the writer, never inferred)
    OUT/_commits/part-<shard>.json      the commit record naming each committed file
    OUT/_quarantine/...                 rejected input rows with a reason (arrow.QUARANTINE), same layout
    OUT/_run.json                       the kind of output and the settings that fix the results (checked on resume)
    OUT/_lease.json                     the live run writing OUT (host, pid, heartbeat); gone when it ends
    OUT/_manifest.json                  written last: config, versions, counts, timings, storage

Both JSON records go through ``tribunal.cluster.redact``: values under secret-named keys are
redacted, URLs lose user info and query strings, the environment is recorded through an allowlist
(with the ``ray job submit`` submission id, when there is one).

Commit protocol (``tribunal.cluster.storage``): a file counts once its commit record exists,
created if absent; readers list the live records only (``parts``), files no record names are
removed at the next run's start. Resume: a re-run with the same settings reads the ids in the
committed files (and quarantine) and skips those samples. ``Roller`` merges the small per-batch
files into target-size files as a run goes; ``roll`` is also what ``tribunal compact`` runs.
"""

from __future__ import annotations

import json
import platform
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tribunal.cluster import redact, storage
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

RUN_FILE = "_run.json"
MANIFEST = "_manifest.json"
QUARANTINE = "_quarantine"
LEASE = "_lease.json"
LEASE_BEAT_S = 10.0  # a live run rewrites its lease this often ...
LEASE_STALE_S = 45.0  # ... and one not rewritten for this long is a dead run's (another host's)
# Settings whose values are paths: recorded and compared resolved, so `samples.parquet` and
# `/home/me/samples.parquet` are the same run.
PATH_SETTINGS = ("input", "model", "samples", "meta_rm", "state", "greedy")
# The names by which a directory is recognisably tribunal's own output (what --overwrite may delete).
OWN_NAMES = (RUN_FILE, MANIFEST, storage.COMMITS, LEASE)


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("tribunal", "ray", "pyarrow", "polars", "torch", "transformers", "vllm", "s3fs"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def run_info() -> dict[str, Any]:
    """Where and how this run ran, through an allowlist: the ``ray job submit`` submission id (a
    re-submitted job with the same id and output resumes), the host, a few environment facts."""
    return {
        "ray_submission_id": redact.ray_submission_id(),
        "host": platform.node(),
        "environment": redact.environment(),
    }


def canonical(uri: str) -> str:
    """A path as one string per place: local paths absolute with links resolved, remote ones
    with their scheme (``s3://bucket/key``, no trailing slash)."""
    import os

    if "://" not in uri:
        return os.path.realpath(os.path.abspath(os.path.expanduser(uri)))
    scheme, rest = uri.split("://", 1)
    return f"{scheme.lower().replace('s3a', 's3')}://{rest.strip('/')}"


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def canonical_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with the path-valued ones (``PATH_SETTINGS``) resolved (``canonical``)."""
    return {k: canonical(v) if k in PATH_SETTINGS and isinstance(v, str) and v else v for k, v in settings.items()}


@dataclass(frozen=True)
class RunToken:
    """Which run owns an output directory: the id ``OutputDir.prepare`` wrote in ``_run.json``.

    Workers check it just before publishing a shard. A run killed with SIGKILL can leave workers
    that finish their batch a second or two later; if a re-run has started meanwhile, it wrote a
    new id, and their shards (whose samples the re-run does again) are thrown away instead of
    landing twice. Picklable: it travels to the workers with the stage arguments.
    """

    fs: Any
    path: str
    run_id: str

    def current(self) -> bool:
        try:
            return json.loads(self.fs.cat_file(self.path)).get("run_id") == self.run_id
        except FileNotFoundError:
            return False


@dataclass
class OutputDir:
    uri: str
    run: RunToken | None = field(default=None, init=False)  # set by prepare

    def __post_init__(self) -> None:
        self.fs, self.path = storage.resolve(self.uri)

    @property
    def quarantine(self) -> str:
        return storage.join(self.path, QUARANTINE)

    def exists(self) -> bool:
        return self.fs.exists(self.path)

    def parts(self) -> list[str]:
        """The committed part files (``storage.committed_files``: what the live commit records
        name; the ``part-*`` listing of an output written before commit records)."""
        return storage.committed_files(self.fs, self.path)

    def quarantine_parts(self) -> list[str]:
        return storage.committed_files(self.fs, self.quarantine)

    def reset_parts(self) -> None:
        """Remove the shards of an earlier run (reducers always recompute) and make the directory."""
        self.fs.invalidate_cache(self.path)
        if self.fs.exists(self.path):
            for p in self.fs.ls(self.path, detail=False):
                if p.rsplit("/", 1)[-1].startswith("part-"):
                    self.fs.rm(p)
            commits = storage.join(self.path, storage.COMMITS)
            if self.fs.exists(commits):
                self.fs.rm(commits, recursive=True)
        self.fs.makedirs(self.path, exist_ok=True)
        storage.mark_committed_layout(self.fs, self.path)

    def roll(self, target_bytes: int, final: bool = False) -> int:
        """Merge committed files into files of about ``target_bytes`` (``storage.plan_merges``);
        returns how many merged files were committed. Safe while writers run: it only touches
        committed files, and a merged file replaces its inputs in one commit record."""
        merged = 0
        for directory in (self.path, self.quarantine):
            for group in storage.plan_merges(storage.commit_records(self.fs, directory)[0], target_bytes, final):
                merged += storage.merge(self.fs, directory, group)
        return merged

    def read(self, files: list[str], columns: list[str] | None = None) -> pa.Table:
        import pyarrow.dataset as ds

        if not files:
            raise ValueError("no files to read")
        return ds.dataset(files, filesystem=storage.arrow_filesystem(self.fs), format="parquet").to_table(columns=columns)

    def read_polars(self, files: list[str], columns: list[str]):
        """The files as one polars DataFrame: polars' own reader locally, pyarrow over fsspec otherwise."""
        import polars as pl

        if storage.is_local(self.fs):
            return pl.read_parquet(files, columns=columns)
        return pl.from_arrow(self.read(files, columns))

    def prepare(self, settings: dict[str, Any], overwrite: bool = False, *, kind: str | None = None,
                inputs: tuple[str, ...] | list[str] = ()) -> pa.Array:
        """Make the directory ready for a (re)run (``prepare_run``); return the ids already done."""
        self.prepare_run(settings, overwrite, kind=kind, inputs=inputs)
        return self.done_ids()

    def prepare_run(self, settings: dict[str, Any], overwrite: bool = False, *, kind: str | None = None,
                    inputs: tuple[str, ...] | list[str] = ()) -> OutputDir:
        """Make the directory ready for a (re)run: check, clean temporaries, take the lease,
        write a new run token; returns this ``OutputDir``.

        ``kind`` names what the directory holds (``trajectory``, ``vote`` ...); ``settings`` are
        the options that fix the results, compared with path values resolved. Refused with one
        line, before anything is written: an output that is a file, is an input or lies inside
        one; a directory that is not empty and not recognisably tribunal's; one holding another
        kind of output, or a run with other settings (unless ``overwrite``, which then deletes
        it: only ever a tribunal output of the same kind that holds no input); one a live run
        is writing (its lease).
        """
        run_path = storage.join(self.path, RUN_FILE)
        settings = redact.redact(canonical_settings(settings))  # as recorded: a re-run compares like with like
        self.check_not_input(inputs)
        previous = self._existing(kind)
        self._check_lease()
        if overwrite and previous is not None:
            for uri in inputs:
                if _inside(canonical(uri), canonical(self.display())):
                    raise TribunalError(f"--overwrite would delete {self.display()}, which holds the input {uri}: use another --output")
            self.fs.rm(self.path, recursive=True)
            self.fs.invalidate_cache(self.path)
            previous = None
        if previous is not None:
            before = previous.get("settings", {})
            resolved = canonical_settings(before)  # a record written before paths were resolved
            for key in sorted(set(before) | set(settings)):
                if settings.get(key) not in (before.get(key), resolved.get(key)):
                    raise TribunalError(
                        f"{self.display()} holds a run with {key}={before.get(key)!r}, this one has "
                        f"{key}={settings.get(key)!r}: use another --output, or --overwrite to replace it"
                    )
        self.fs.makedirs(self.path, exist_ok=True)
        self._take_lease()
        self.run = RunToken(self.fs, run_path, uuid.uuid4().hex)
        record = {"kind": kind, "settings": settings, "run_id": self.run.run_id} if kind else {"settings": settings, "run_id": self.run.run_id}
        storage.write_text_atomic(self.fs, run_path, json.dumps(record, indent=2, sort_keys=True))
        # After the new token: a worker of a killed run can no longer commit. What no live commit
        # record names (attempts that never committed, files a merge replaced) goes now.
        for directory in (self.path, self.quarantine):
            if not storage.has_commit_layout(self.fs, directory):
                self._adopt_legacy(directory)
            storage.remove_garbage(self.fs, directory)
        return self

    def check_not_input(self, inputs) -> None:
        """Refuse an output that is one of the inputs or lies inside one (writing there would mix
        our files into the user's data, and --overwrite would delete it)."""
        mine = canonical(self.display())
        for uri in inputs:
            theirs = canonical(uri)
            if _inside(mine, theirs):
                what = "is the input" if mine == theirs else f"is inside the input {uri}"
                raise TribunalError(f"--output {self.display()} {what}: use another --output")

    def _existing(self, kind: str | None) -> dict | None:
        """The run record of what is at the output path (None: nothing, or an empty directory);
        one line for what must not be touched: a file, a foreign directory, another kind."""
        self.fs.invalidate_cache(self.path)
        if not self.fs.exists(self.path):
            return None
        if not self.fs.isdir(self.path):
            raise TribunalError(f"--output {self.display()} is a file, not a directory: use another --output")
        names = {p.rstrip("/").rsplit("/", 1)[-1] for p in self.fs.ls(self.path, detail=False)}
        run_path = storage.join(self.path, RUN_FILE)
        if RUN_FILE in names:
            with self.fs.open(run_path, "r") as f:
                record = json.load(f)
            if kind and record.get("kind") not in (None, kind):
                raise TribunalError(
                    f"--output {self.display()} holds a tribunal {record['kind']} output, this job writes {kind}: use another --output"
                )
            return record
        if self.parts():
            raise TribunalError(f"{self.display()} has part files but no {RUN_FILE}: not a tribunal output; use another --output")
        foreign = sorted(n for n in names if n not in OWN_NAMES and n != QUARANTINE and not n.startswith(".tmp-"))
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise TribunalError(
                f"--output {self.display()} is a directory that tribunal did not write (it holds {shown}): "
                "use another --output (tribunal never deletes or writes into a directory of yours)"
            )
        return None

    # ---------------------------------------------------------- the lease: one live run per output
    def _lease_path(self) -> str:
        return storage.join(self.path, LEASE)

    def _check_lease(self) -> None:
        import os

        lease = self._read_lease()
        if lease is None:
            return
        host, pid = lease.get("host"), lease.get("pid")
        if host == platform.node():
            if pid == os.getpid() or not _pid_alive(pid):
                return  # this process's own earlier run, or a run that died
        elif time.time() - float(lease.get("beat", 0)) > LEASE_STALE_S:
            return  # another host's run that stopped beating
        since = time.strftime("%H:%M:%S", time.localtime(float(lease.get("started", 0))))
        raise TribunalError(
            f"--output {self.display()} is being written by another run (host {host}, pid {pid}, since {since}): "
            "wait for it to finish, or use another --output"
        )

    def _read_lease(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self._lease_path()))
        except (FileNotFoundError, ValueError):
            return None

    def _take_lease(self) -> None:
        """Hold the output for this run: a lease naming this process, rewritten every
        ``LEASE_BEAT_S`` by a daemon thread until ``release`` (or until a later run takes it)."""
        import os
        import threading

        lease = {"host": platform.node(), "pid": os.getpid(), "id": uuid.uuid4().hex, "started": time.time(), "beat": time.time()}
        storage.write_text_atomic(self.fs, self._lease_path(), json.dumps(lease))
        self._lease_id = lease["id"]
        self._lease_stop = stop = threading.Event()
        fs, path = self.fs, self._lease_path()

        def beat() -> None:
            while not stop.wait(LEASE_BEAT_S):
                try:
                    current = json.loads(fs.cat_file(path))
                    if current.get("id") != lease["id"]:
                        return  # a later run of this process took over
                    storage.write_text_atomic(fs, path, json.dumps({**lease, "beat": time.time()}))
                except Exception:  # noqa: BLE001 - a missed beat; the next one tries again
                    pass

        threading.Thread(target=beat, name="tribunal-lease", daemon=True).start()

    def hold(self) -> None:
        """Hold an existing output for a job that edits it in place (``compact``) without a new
        run record: refused in one line while a live run writes it; ``release`` ends the hold."""
        self._check_lease()
        self._take_lease()

    def release(self) -> None:
        """End this run's hold on the output (the lease goes)."""
        stop = getattr(self, "_lease_stop", None)
        if stop is None:
            return
        stop.set()
        self._lease_stop = None
        lease = self._read_lease()
        if lease is not None and lease.get("id") == self._lease_id:
            try:
                self.fs.rm(self._lease_path())
            except FileNotFoundError:
                pass

    def _adopt_legacy(self, directory: str) -> None:
        """An output written before commit records: each of its part files gets a record (they
        were published atomically, so each is whole), then the directory is marked."""
        for f in storage.committed_files(self.fs, directory):  # the legacy listing
            name = f.rsplit("/", 1)[-1]
            storage.commit(self.fs, directory, name[: -len(".parquet")], name, rows=storage.parquet_footer(self.fs, f).num_rows, bytes=self.fs.size(f))
        storage.mark_committed_layout(self.fs, directory)

    def done_ids(self) -> pa.Array:
        import pyarrow.compute as pc

        arrays = []
        for files in (self.parts(), self.quarantine_parts()):
            if files:
                arrays.append(self.read(files, [c.ID])[c.ID].combine_chunks())
        if not arrays:
            return pa.array([], pa.string())
        return pc.unique(pc.drop_null(pa.concat_arrays([a.cast(pa.string()) for a in arrays])))

    def quarantine_counts(self) -> dict[str, int]:
        files = self.quarantine_parts()
        if not files:
            return {}
        reasons = self.read(files, [c.REASON])[c.REASON].to_pylist()
        out: dict[str, int] = {}
        for r in reasons:
            out[r] = out.get(r, 0) + 1
        return dict(sorted(out.items()))

    def write_manifest(self, manifest: dict[str, Any], path: str | None = None) -> str:
        """Write the manifest (redacted, plus this run's allowlisted facts) to ``path`` (default
        ``OUT/_manifest.json``) and return its path as the user would write it."""
        path = path or storage.join(self.path, MANIFEST)
        manifest = {**manifest, "storage": storage.storage_settings(self.fs), "run": run_info()}
        text = json.dumps(manifest, indent=2, sort_keys=False, default=str)
        safe = redact.redact(json.loads(text))  # default=str first: every value is JSON now
        storage.write_text_atomic(self.fs, path, json.dumps(safe, indent=2, sort_keys=False))
        return self.display(path)

    def display(self, path: str | None = None) -> str:
        return storage.display(self.fs, path or self.path)


def _pid_alive(pid) -> bool:
    import os

    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process its parent has not reaped yet (a zombie) runs nothing
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class Roller:
    """Driver-side rolling of a job's output into files of about ``target_bytes``: the workers
    commit one small file per batch (a kill loses at most the batch each actor has in flight);
    once they add up to a target's worth, the driver merges them into one committed file that
    replaces them. ``finish`` merges what is left (files under the target, two or more)."""

    def __init__(self, out: OutputDir, target_bytes: int):
        self.out, self.target = out, target_bytes
        self.pending = 0
        self.merged = 0

    def add(self, nbytes: int) -> None:
        self.pending += nbytes
        if self.pending >= self.target:
            self.merged += self.out.roll(self.target)
            self.pending = 0

    def finish(self) -> int:
        self.merged += self.out.roll(self.target, final=True)
        return self.merged


def input_files(uri: str) -> tuple[Any, list[str]]:
    """(fsspec filesystem, Parquet files) of an input path; a one-line error if there are none."""
    fs, path = storage.resolve(uri)
    return fs, storage.list_parquet(fs, path, "input")


def trajectory_input(uri: str, columns: tuple[str, ...]) -> tuple[OutputDir, list[str]]:
    """A reducer's input: trajectory shards holding ``columns`` (checked on the first file's footer)."""
    import pyarrow.parquet as pq

    src = OutputDir(uri)
    files = storage.list_parquet(src.fs, src.path, "trajectories")
    with src.fs.open(files[0], "rb") as fh:
        names = pq.ParquetFile(fh).schema_arrow.names
    for col in columns:
        if col not in names:
            raise TribunalError(
                f"{storage.display(src.fs, files[0])}: no {col!r} column: not a trajectory shard "
                "of this tribunal version (run `tribunal sample` or `tribunal rft` first)"
            )
    return src, files


def check_inputs(fs, files: list[str], check_schema) -> int:
    """Check every input file's schema (footer only) and that the files agree on each column's
    type (one dataset is read from them all); return the total row count."""
    total = 0
    seen: dict[str, tuple[pa.DataType, str]] = {}  # column -> (type, the first file with it)
    for f in files:
        meta = storage.parquet_footer(fs, f)
        schema = meta.schema.to_arrow_schema()
        where = storage.display(fs, f)
        check_schema(schema, where)
        for fld in schema:
            first = seen.setdefault(fld.name, (fld.type, where))
            if not _same_type(first[0], fld.type):
                raise TribunalError(
                    f"input files disagree on column {fld.name!r}: {first[1]} has {first[0]}, {where} has {fld.type}: "
                    "write every file with the same type (e.g. ids as strings)"
                )
        total += meta.num_rows
    return total


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Whether two files' types of one column can be read as one dataset (null columns and
    string/large_string variants combine)."""
    if a == b or pa.types.is_null(a) or pa.types.is_null(b):
        return True
    try:
        pa.unify_schemas([pa.schema([("x", a)]), pa.schema([("x", b)])], promote_options="permissive")  # as Ray Data reads them
        return True
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False


def duplicate_input_ids(fs, files: list[str], batch_rows: int = 65_536) -> frozenset[str]:
    """Ids that more than one input row has, across all input files: ids given in the ``id``
    column, and the ids derived from content for rows without one (``validate.content_ids``).

    Given ids: only the ``id`` column is read. Rows without an id: their content columns are
    streamed and hashed (64-bit, polars), 16 bytes kept per row; one row of each group sharing a
    hash is read again and gets its exact derived id, so the pass costs one read of the content
    and little memory. Found on the driver, so every copy is quarantined whatever the batching.
    """
    from collections import Counter

    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    from tribunal.schemas.validate import content_columns, content_ids

    given: list[pl.Series] = []
    hashes: list[np.ndarray] = []
    places: list[np.ndarray] = []  # (file index, row) of each hashed row
    content_of: dict[int, list[str]] = {}
    for fi, f in enumerate(files):
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            content = content_of[fi] = content_columns(pf.schema_arrow, storage.display(fs, f))
            has_id = c.ID in pf.schema_arrow.names
            first = 0
            for batch in pf.iter_batches(batch_size=batch_rows, columns=([c.ID] if has_id else []) + content):
                df = pl.from_arrow(batch)
                missing = np.ones(len(df), dtype=bool)
                if has_id:
                    ids = df[c.ID].cast(pl.String)
                    given.append(ids.filter(ids.is_not_null() & (ids != "")))
                    missing = (ids.is_null() | (ids == "")).to_numpy()
                rows = np.flatnonzero(missing)
                if len(rows):
                    h = df.select(pl.struct(content).hash(seed=0)).to_series().to_numpy()
                    hashes.append(h[rows])
                    places.append(np.stack([np.full(len(rows), fi), rows + first], axis=1))
                first += len(df)
    dup: set[str] = set()
    if given:
        counts = pl.concat(given).value_counts()
        dup.update(counts.filter(pl.col("count") > 1).to_series().to_list())
    if hashes:
        # Rows sharing a hash share their raw content (a 64-bit collision aside): one row of each
        # such group gets its exact derived id, which counts for the whole group.
        h, where = np.concatenate(hashes), np.concatenate(places)
        _, first, sizes = np.unique(h, return_index=True, return_counts=True)
        groups = sizes > 1
        representatives, sizes = where[first[groups]], sizes[groups]
        derived: Counter = Counter()
        for fi in np.unique(representatives[:, 0]):
            mine = representatives[:, 0] == fi
            with fs.open(files[fi], "rb") as fh:
                table = pq.ParquetFile(fh).read(columns=content_of[fi]).take(representatives[mine, 1])
            for i, n in zip(content_ids(table, storage.display(fs, files[fi])), sizes[mine]):
                if i is not None:
                    derived[i] += int(n)
        dup.update(i for i, n in derived.items() if n > 1)
    return frozenset(dup)


class SeenIds:
    """Sample ids met in earlier chunks, as 64-bit hashes (8 bytes per sample, not a set of strings),
    to refuse a sample whose rows are spread over two chunks."""

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._sorted = np.empty(0, dtype=np.uint64)

    def add(self, ids) -> str | None:
        """Record a chunk's ids (a polars Series); return one that an earlier chunk had, if any."""
        np = self._np
        h = np.sort(ids.hash(seed=0).to_numpy())  # sorted keys: the binary searches stay local
        if len(self._sorted):
            at = np.searchsorted(self._sorted, h).clip(max=len(self._sorted) - 1)
            hit = self._sorted[at] == h
            if hit.any():
                return ids.filter(ids.hash(seed=0).is_in(h[hit].tolist())).item(0)
        # Two sorted runs: a stable sort (timsort) merges them in linear time.
        self._sorted = np.sort(np.concatenate([self._sorted, h]), kind="stable")
        return None


class Timer:
    def __init__(self) -> None:
        self.start = time.time()
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks[name] = round(time.time() - self.start, 3)
