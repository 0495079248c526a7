"""Stages of ``metarm-score``: skip the trajectories already scored, check them, score them.

Each is one ``map_batches`` over pyarrow tables; the write stage is ``stages.write_stage``.
"""

from __future__ import annotations

import json

import pyarrow as pa

from tribunal.jobs.pipeline.stages import require, shard_name
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

SCORE_INPUT = (c.ID, c.SAMPLE_INDEX, c.HINTED, c.PERMUTATION, c.TEXT, c.CONTEXT, c.RESPONSES)


def trajectory_keys(table: pa.Table) -> pa.Array:
    """One string per row, ``id#sample_index`` plus ``h`` when hinted (``training.data.example_keys``'s form)."""
    import pyarrow.compute as pc

    index = pc.binary_join_element_wise(table[c.SAMPLE_INDEX].cast(pa.string()), pc.if_else(table[c.HINTED], "h", ""), "")
    return pc.binary_join_element_wise(table[c.ID].cast(pa.string()), index, "#")


def check_rows(table: pa.Table) -> tuple[pa.Table, list[dict]]:
    """Rows the meta-RM can read, and quarantine rows (``arrow.QUARANTINE``) for the others: a
    permutation that is not one of the sample's responses (``bad_permutation``)."""
    perms, resp = table[c.PERMUTATION].to_pylist(), table[c.RESPONSES].to_pylist()
    ok, bad = [], []
    for i, (p, r) in enumerate(zip(perms, resp)):
        if p is not None and r is not None and len(r) >= 1 and sorted(p) == list(range(len(r))):
            ok.append(i)
        else:
            row = {k: table[k][i].as_py() for k in (c.ID, c.SAMPLE_INDEX, c.HINTED, c.PERMUTATION, c.RESPONSES)}
            bad.append({c.ID: f"{row[c.ID]}#{row[c.SAMPLE_INDEX]}{'h' if row[c.HINTED] else ''}", c.REASON: "bad_permutation",
                        c.DETAIL: f"permutation {p} does not order the sample's {len(r or [])} responses",
                        c.SOURCE_PATH: None, c.RAW: json.dumps(row, ensure_ascii=False)})
    return table.take(pa.array(ok, pa.int64())), bad


def select_stage(batch: pa.Table, *, done_keys: pa.Array, quarantine_dir: str, fs, run=None) -> pa.Table:
    """Drop trajectories already scored (a resumed run); quarantine rows the meta-RM cannot read."""
    import pyarrow.compute as pc

    from tribunal.cluster.storage import join, write_parquet_atomic

    require(batch, "select_stage", SCORE_INPUT)
    batch = batch.drop_columns([n for n in batch.column_names if n == c.SOURCE_PATH])
    if len(done_keys):
        batch = batch.filter(pc.invert(pc.is_in(trajectory_keys(batch), value_set=done_keys)))
    batch, bad = check_rows(batch)
    if bad:
        bad_ids = pa.array([b[c.ID] for b in bad])
        if len(done_keys):
            bad = [b for b, done in zip(bad, pc.is_in(bad_ids, value_set=done_keys).to_pylist()) if not done]
        if bad:
            q = pa.Table.from_pylist(bad, schema=arrow.QUARANTINE)
            write_parquet_atomic(fs, join(quarantine_dir, shard_name([b[c.ID] for b in bad])), q, arrow.QUARANTINE, publish_if=run and run.current)
    return batch


class MetaRmScoreStage:
    """Trajectories -> the same rows plus ``meta_score`` (``arrow.TRAJECTORY_SCORED``), on a
    classify engine built in the actor. The input text is ``render_frame.metarm_chats`` (the
    renderer of the training corpus) through the model's chat template without a generation prompt.
    """

    def __init__(self, engine_cfg, batch_size: int = 8, board=None):
        import time

        from tribunal.jobs.engines import build_engine
        from tribunal.jobs.pipeline.progress import Reporter

        t0 = time.perf_counter()
        self.engine = build_engine(engine_cfg)
        self.batch_size = batch_size
        self.reporter = Reporter(board)
        self.reporter.engine_loaded(time.perf_counter() - t0)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import polars as pl

        from tribunal.jobs.grm import render_frame as rf

        require(batch, "MetaRmScoreStage", SCORE_INPUT)
        if len(batch) == 0:
            return pa.Table.from_pylist([], schema=arrow.TRAJECTORY_SCORED)
        frame = pl.from_arrow(batch.select(list(SCORE_INPUT)))
        messages = rf.metarm_chats(frame, [pl.col(c.ID)]).table()[c.MESSAGES].to_pylist()
        texts = [self.engine.render_chat(m, add_generation_prompt=False) for m in messages]
        scores = self.engine.classify(texts)
        self.reporter.add(requests=len(texts), rows=len(texts))
        self.reporter.flush()
        out = batch.append_column(c.META_SCORE, pa.array(scores, pa.float64()))
        return out.select(arrow.TRAJECTORY_SCORED.names).cast(arrow.TRAJECTORY_SCORED)
