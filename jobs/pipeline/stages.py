"""The stages jobs are built from. Each is one ``map_batches`` over pyarrow tables.

Every stage states the columns it needs and what it emits, and fails at its boundary with a
message naming itself and the column.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from tribunal.schemas import arrow
from tribunal.schemas import columns as c


@dataclass(frozen=True)
class StagePlan:
    """A stage as plain data: what runs, the ``map_batches`` arguments it runs with, and its
    column contract (``check_chain`` checks a plan's contracts before anything runs)."""

    name: str
    fn: Any  # a function (Ray tasks) or a class (a Ray actor pool); None for a pure Dataset op
    kwargs: dict = field(default_factory=dict)  # keyword arguments of the Dataset method
    op: str = "map_batches"  # the Dataset method that applies it
    needs: tuple[str, ...] = ()  # columns the stage reads from its input
    adds: tuple[str, ...] = ()  # columns it adds to those it passes through
    emits: tuple[str, ...] | None = None  # or: exactly the columns it outputs (None: input + adds)

    def apply(self, ds):
        import warnings

        method = getattr(ds, self.op)
        with warnings.catch_warnings():
            # The engine pools' fault policy (cluster/pools.py: max_restarts, max_task_retries) has
            # no named map_batches parameter in Ray 2.60, only the **ray_remote_args it deprecates
            # (to go in Ray 2.64): kept, and the warning, which users cannot act on, not printed.
            warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
            return method(self.fn, **self.kwargs) if self.fn is not None else method(**self.kwargs)

    @property
    def num_gpus(self) -> float:
        return float(self.kwargs.get("num_gpus") or 0)


def check_chain(stages: list[StagePlan], columns) -> list[str]:
    """Check that each stage's ``needs`` are among the columns the stages before it give, starting
    from the input's ``columns``; returns the plan's output columns. A plan that does not fit
    fails here, on the driver, naming the stage and the column, before any engine starts."""
    have = list(columns)
    for st in stages:
        missing = [col for col in st.needs if col not in have]
        if missing:
            raise ValueError(f"plan: stage {st.name!r} needs column {missing[0]!r}, which the stages before it do not give (they give {have})")
        have = list(st.emits) if st.emits is not None else have + [col for col in st.adds if col not in have]
    return have


def require(table: pa.Table, stage: str, cols: tuple[str, ...]) -> None:
    missing = [col for col in cols if col not in table.column_names]
    if missing:
        raise ValueError(f"{stage}: input batch has no column {missing[0]!r} (has {table.column_names})")


def shard_name(ids: list[str]) -> str:
    """A deterministic shard name from the keys it holds."""
    h = hashlib.blake2b("\x1f".join(ids).encode("utf-8"), digest_size=8).hexdigest()
    return f"part-{h}.parquet"


# ---------------------------------------------------------------- validate
def split_unusable(valid: pa.Table, n_range: tuple[int, int | None], require_labels: bool) -> tuple[pa.Table, pa.Table]:
    """Move valid samples this job cannot use into quarantine rows: a response count the template
    cannot take (``unsupported_n``), or no labels when the job needs them (``no_labels``)."""
    import pyarrow.compute as pc

    lo, hi = n_range
    n = pc.list_value_length(valid[c.RESPONSES])
    n_ok = pc.greater_equal(n, lo) if hi is None else pc.and_(pc.greater_equal(n, lo), pc.less_equal(n, hi))
    ok = pc.and_(n_ok, pc.is_valid(valid[c.LABELS])) if require_labels else n_ok
    want = f"{lo}..{hi}" if hi is not None else f">= {lo}"
    rows = []
    for r in valid.filter(pc.invert(ok)).to_pylist():
        k = len(r[c.RESPONSES])
        if lo <= k and (hi is None or k <= hi):
            reason, detail = "no_labels", "this job needs labels to judge correctness"
        else:
            reason, detail = "unsupported_n", f"{k} responses; the template takes {want}"
        rows.append({c.ID: r[c.ID], c.REASON: reason, c.DETAIL: detail, c.SOURCE_PATH: None, c.RAW: json.dumps(r, ensure_ascii=False)})
    return valid.filter(ok), pa.Table.from_pylist(rows, schema=arrow.QUARANTINE)


def validate_stage(
    batch: pa.Table,
    *,
    need_unique_max: bool,
    n_range: tuple[int, int | None],
    require_labels: bool,
    done_ids: pa.Array,
    duplicate_ids: frozenset,
    quarantine_dir: str,
    fs,
    run=None,
) -> pa.Table:
    """Raw input rows -> canonical samples (``arrow.SAMPLE``) the template can take.

    Invalid rows are written to ``quarantine_dir`` with their reason; rows whose id is already in
    the output (``done_ids``, a resumed run) are dropped here, before any engine work.
    """
    import pyarrow.compute as pc

    from tribunal.cluster.storage import join, write_parquet_atomic
    from tribunal.schemas.validate import normalize

    valid, quarantined = normalize(
        batch, need_unique_max=need_unique_max, source_column=c.SOURCE_PATH, duplicate_ids=duplicate_ids
    )
    valid, unusable = split_unusable(valid, n_range, require_labels)
    if len(unusable):
        quarantined = pa.concat_tables([quarantined, unusable])
    if len(quarantined):
        # A row too broken to derive an id from still needs a key, or a resumed run would
        # quarantine it twice: the hash of its raw JSON.
        raw_keys = [f"raw-{hashlib.blake2b(r.encode(), digest_size=8).hexdigest()}" for r in quarantined[c.RAW].to_pylist()]
        quarantined = quarantined.set_column(
            quarantined.schema.get_field_index(c.ID), arrow.QUARANTINE.field(c.ID), pc.coalesce(quarantined[c.ID], pa.array(raw_keys))
        )
    if len(done_ids):
        valid = valid.filter(pc.invert(pc.is_in(valid[c.ID], value_set=done_ids)))
        quarantined = quarantined.filter(pc.invert(pc.is_in(quarantined[c.ID], value_set=done_ids)))
    if len(quarantined):
        ids = quarantined[c.ID].to_pylist() + quarantined[c.RAW].to_pylist()
        write_parquet_atomic(fs, join(quarantine_dir, shard_name(ids)), quarantined, arrow.QUARANTINE, publish_if=run and run.current)
    return valid


# ---------------------------------------------------------------- generate
# Engine bookkeeping the generate stage adds to its output and the write stage moves into its
# counts (never into the shards): the actor's engine start-up (on its first row only), and per
# request (on the first row of its group) the prompt tokens sent and those the engine's prefix
# cache served.
ENGINE_LOAD_S = "_engine_load_s"
CACHED_TOKENS = "_cached_prompt_tokens"
PREFILL_TOKENS = "_request_prompt_tokens"
ENGINE_STATS = (ENGINE_LOAD_S, CACHED_TOKENS, PREFILL_TOKENS)


class GenerateStage:
    """Canonical samples -> trajectories (``arrow.TRAJECTORY``), on an engine built in the actor.

    Needs: id, context, responses, labels. Emits k non-hinted trajectories per sample, plus one
    hinted trajectory for the samples the hint mode selects (all in the same call, so hinted
    sampling needs no second pass over the data).

    A sample the engine must not or cannot take is set aside whole, never dropped: written to
    ``quarantine_dir`` with its reason, ``prompt_too_long`` (a prompt that fills the model's
    context, checked by token count before the engine sees it) or ``stage_error`` (rendering or
    generating it raised; the rest of its batch goes on). An error every sample of a batch
    raises is not the data's fault and fails the job.
    """

    def __init__(self, engine_cfg, sampling, template: str, k: int, seed: int, hint: str = "never",
                 quarantine_dir: str | None = None, fs=None, run=None, board=None, orders: str = "random"):
        import time

        from tribunal.jobs.engines import build_engine
        from tribunal.jobs.grm.protocol import load_template
        from tribunal.jobs.pipeline.progress import Reporter

        t0 = time.perf_counter()
        self.engine = build_engine(engine_cfg)
        # Reported once, with this actor's first batch (see ENGINE_STATS), for the manifest: engine
        # start-up apart from generation; and at once to the driver's progress line.
        self._load_s: float | None = time.perf_counter() - t0
        self.reporter = Reporter(board)
        self.reporter.engine_loaded(self._load_s)
        self.sampling = sampling
        self.template = load_template(template)
        self.k = k
        self.seed = seed
        self.orders = orders  # random or balanced response orders (trajectories.plan_trajectories)
        self.hint = hint
        self.quarantine_dir, self.fs, self.run = quarantine_dir, fs, run

    def _requests(self, sample: dict, specs: list, aside: dict) -> list | None:
        """(request, group) pairs of one sample, or None when it is set aside (``aside[id]``)."""
        from tribunal.jobs.engines import GenerationRequest, prompt_too_long
        from tribunal.jobs.engines.faults import raise_for
        from tribunal.jobs.grm import trajectories as tr

        sid = sample[c.ID]
        out = []
        try:
            raise_for(sid)  # a test hook (TRIBUNAL_FAULT_DIR); nothing unless armed
            for group in tr.group_specs(specs):
                prompt = self.engine.render_chat(tr.messages_for(self.template, sample, group[0]))
                too_long = prompt_too_long(self.engine, prompt)
                if too_long:
                    aside[sid] = ("prompt_too_long", too_long)
                    return None
                out.append((GenerationRequest(prompt, len(group), tr.request_seed(self.seed, sid, group[0])), group))
        except Exception as e:  # noqa: BLE001 - this sample's problem: quarantined with the cause
            aside[sid] = ("stage_error", _error_line(e, "rendering the prompt"))
            return None
        return out

    def _generate(self, samples: list[dict], specs_per_sample: list[list], aside: dict) -> list[list[dict]]:
        """Run every spec of every sample through one engine call; rows per sample (none for a
        sample set aside). If the call raises, each sample is tried alone to find the culprits."""
        from tribunal.jobs.grm import trajectories as tr
        from tribunal.schemas.errors import TribunalError

        per_sample = [self._requests(s, specs, aside) for s, specs in zip(samples, specs_per_sample)]
        todo = [si for si, reqs in enumerate(per_sample) if reqs]
        flat = [(si, req, group) for si in todo for req, group in per_sample[si]]
        try:
            results = self.engine.generate([req for _, req, _ in flat], self.sampling, on_result=self._finished) if flat else []
        except TribunalError:
            raise
        except Exception as batch_error:  # noqa: BLE001 - find the sample(s) that raise
            results, failed = [], 0
            for si in todo:
                try:
                    results.extend(self.engine.generate([req for req, _ in per_sample[si]], self.sampling))
                except TribunalError:
                    raise
                except Exception as e:  # noqa: BLE001
                    failed += 1
                    aside[samples[si][c.ID]] = ("stage_error", _error_line(e, "generating"))
                    flat = [x for x in flat if x[0] != si]
            if failed == len(todo) and len(todo) > 1:
                raise batch_error  # every sample fails alone too: the engine, not the data
        rows: list[list[dict]] = [[] for _ in samples]
        for (si, req, group), res in zip(flat, results):
            for j, (spec, gen) in enumerate(zip(group, res.generations)):
                row = tr.trajectory_row(self.template, samples[si], spec, gen, res.prompt_tokens)
                # one request serves the group: its prefill and cache hits are counted on its first row
                row[CACHED_TOKENS] = res.cached_tokens if j == 0 else 0
                row[PREFILL_TOKENS] = res.prompt_tokens if j == 0 else 0
                rows[si].append(row)
        for r in rows:
            r.sort(key=lambda row: (row[c.HINTED], row[c.SAMPLE_INDEX]))
        return rows

    def _finished(self, res) -> None:
        """One request done: to the driver's progress line."""
        self.reporter.add(requests=1, rows=len(res.generations), completion_tokens=sum(g.completion_tokens for g in res.generations))

    def _quarantine(self, samples: list[dict], aside: dict) -> None:
        from tribunal.cluster.storage import join, write_parquet_atomic

        if self.quarantine_dir is None:
            sid, (reason, detail) = next(iter(aside.items()))
            raise ValueError(f"GenerateStage: sample {sid}: {reason}: {detail}")
        rows = [
            {c.ID: s[c.ID], c.REASON: aside[s[c.ID]][0], c.DETAIL: aside[s[c.ID]][1], c.SOURCE_PATH: None,
             c.RAW: json.dumps(s, ensure_ascii=False, default=str)}
            for s in samples if s[c.ID] in aside
        ]  # fmt: skip
        table = pa.Table.from_pylist(rows, schema=arrow.QUARANTINE)
        name = shard_name(["generate"] + [r[c.ID] for r in rows])
        write_parquet_atomic(self.fs, join(self.quarantine_dir, name), table, arrow.QUARANTINE, publish_if=self.run and self.run.current)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tribunal.jobs.engines.faults import fault_point
        from tribunal.jobs.grm import trajectories as tr

        require(batch, "GenerateStage", (c.ID, c.CONTEXT, c.RESPONSES, c.LABELS))
        samples = batch.to_pylist()
        for s in samples:  # the validate stage quarantines these; reaching here is a wiring bug
            problem = self.template.check_n(len(s[c.RESPONSES]))
            if problem:
                raise ValueError(f"GenerateStage: sample {s[c.ID]}: {problem}")
        fault_point("batch_start")  # test hooks (TRIBUNAL_FAULT_DIR); nothing unless armed
        aside: dict[str, tuple[str, str]] = {}
        plans = [tr.plan_trajectories(s[c.ID], len(s[c.RESPONSES]), self.k, self.seed, self.orders) for s in samples]
        rows = self._generate(samples, plans, aside)
        if self.hint != "never":
            hinted_idx = [
                i for i, s in enumerate(samples)
                if s[c.ID] not in aside and s[c.LABELS] is not None and tr.needs_hint(self.hint, rows[i])
            ]  # fmt: skip
            hinted_rows = self._generate(
                [samples[i] for i in hinted_idx],
                [[tr.plan_hinted(samples[i][c.ID], samples[i][c.LABELS], self.seed)] for i in hinted_idx],
                aside,
            )
            for i, extra in zip(hinted_idx, hinted_rows):
                rows[i].extend(extra)
            for sample_rows in rows:
                tr.set_verdicts(sample_rows, self.hint)
        fault_point("batch")
        if aside:
            self._quarantine(samples, aside)
        flat = [row for s, sample_rows in zip(samples, rows) if s[c.ID] not in aside for row in sample_rows]
        table = pa.Table.from_pylist(flat, schema=arrow.TRAJECTORY.append(pa.field(CACHED_TOKENS, pa.int64())).append(pa.field(PREFILL_TOKENS, pa.int64())))
        load = [0.0] * len(table)
        if self._load_s is not None and len(table):
            load[0], self._load_s = self._load_s, None
        self.reporter.flush()
        return table.append_column(pa.field(ENGINE_LOAD_S, pa.float64()), pa.array(load, pa.float64()))


def _error_line(e: BaseException, doing: str) -> str:
    text = str(e).strip()
    return f"{doing}: {type(e).__name__}: {text.splitlines()[0][:300] if text else ''}"


# ---------------------------------------------------------------- write
STATS = pa.schema(
    [
        ("shard", pa.string()),
        ("samples", pa.int64()),
        ("rows", pa.int64()),
        ("parse_failures", pa.int64()),
        ("correct", pa.int64()),
        ("labelled", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("engine_load_s", pa.float64()),  # > 0 on the first shard of each engine actor
        ("request_prompt_tokens", pa.int64()),  # prompt tokens sent to the engine (one per request, not per row)
        ("cached_prompt_tokens", pa.int64()),  # of those, served by the engine's prefix cache
        ("bytes", pa.int64()),  # the committed file's size (the driver rolls files to the target size)
    ]
)


def write_stage(batch: pa.Table, *, out_dir: str, fs, schema: pa.Schema, run=None) -> pa.Table:
    """Write one block as one committed shard; emit one row of counts for the driver's progress
    line (and its rolling of the small shards into target-size files, ``outputs.Roller``).

    A block holds whole samples (the generate stage emits all rows of a sample together), so a
    shard is a unit of resume: a sample is either entirely in the output or not at all.
    """
    import pyarrow.compute as pc

    from tribunal.cluster.storage import ParquetShardWriter, join

    if len(batch) == 0:
        return pa.Table.from_pylist([], schema=STATS)
    require(batch, "write_stage", (c.ID,))
    engine = {col: pc.sum(batch[col]).as_py() or 0 for col in ENGINE_STATS if col in batch.column_names}
    batch = batch.drop_columns(list(engine))
    ids = batch[c.ID].to_pylist()
    name = shard_name([f"{i}\x1e{j}" for i, j in zip(ids, range(len(ids)))])
    writer = ParquetShardWriter(fs, join(out_dir, name), schema)
    try:
        writer.write(batch)
    except BaseException:
        writer.close(publish=False)
        raise
    if not writer.close(publish_if=run and run.current):
        # A newer run owns the output (this batch is its to do), or another writer committed
        # the same shard first (its copy stands).
        return pa.Table.from_pylist([], schema=STATS)

    def count(col: str, fn) -> int:
        return int(fn(batch[col]).as_py() or 0) if col in batch.column_names else 0

    stats = {
        "shard": name,
        "samples": len(set(ids)),
        "rows": len(batch),
        "parse_failures": count(c.PARSE_ERROR, lambda a: pc.sum(pc.is_valid(a))),
        "correct": count(c.CORRECT, lambda a: pc.sum(pc.fill_null(a, False))),
        "labelled": count(c.CORRECT, lambda a: pc.sum(pc.is_valid(a))),
        "prompt_tokens": count(c.PROMPT_TOKENS, pc.sum),
        "completion_tokens": count(c.COMPLETION_TOKENS, pc.sum),
        "engine_load_s": float(engine.get(ENGINE_LOAD_S, 0.0)),
        "request_prompt_tokens": int(engine.get(PREFILL_TOKENS, 0)),
        "cached_prompt_tokens": int(engine.get(CACHED_TOKENS, 0)),
        "bytes": writer.bytes,
    }
    return pa.Table.from_pylist([stats], schema=STATS)
