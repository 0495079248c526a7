"""metarm-score: the meta-RM's probability that each trajectory is correct (SPEC section 5).

Input schema: trajectory shards (``tribunal.schemas.arrow.TRAJECTORY``), as ``sample``/``rft`` write
them, local or ``s3://``. Each trajectory is rendered as the meta-RM corpus renders it
(``render_frame.metarm_chats``: the sample with its responses in the order the GRM saw them, then
the trajectory text), through the meta-RM's chat template, and scored by the engine's ``classify``
(sigmoid of the one logit at the last token) on an actor pool.

Output schema: ``OUT/part-*.parquet`` in ``tribunal.schemas.arrow.TRAJECTORY_SCORED``: every input
row unchanged plus ``meta_score``; one row per trajectory, keyed by (id, sample_index, hinted).
Rows the meta-RM cannot read go to ``OUT/_quarantine/`` with a reason. Resumable: a re-run skips
the trajectories already scored. ``vote`` then votes guided by the scores (``--k-meta``).

Run::

    tribunal metarm-score --input traj/ --output traj_scored/ --model ckpt/metarm/model
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.pipeline.engine_job import EngineJobConfig
from tribunal.jobs.pipeline.outputs import OutputDir, trajectory_input
from tribunal.jobs.pipeline.stages import StagePlan
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

KIND = "trajectory_scored"


@dataclass(frozen=True)
class MetaRmScoreConfig(EngineJobConfig):
    """A scoring run of a meta-RM over trajectory shards."""

    input: str = opt("", "trajectory shards: a directory or file (local path or s3://...)")
    output: str = opt("", "output directory for scored trajectory shards")
    model: str = opt("", "meta-RM: a one-logit sequence classifier directory (`tribunal train metarm` writes OUT/model)")
    batch_size: int = opt(16, "trajectories per engine call (one output shard each)")

    ENGINE_TASK = "classify"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")

    def settings(self) -> dict:
        return {"input": self.input, "model": self.model}


def build_stages(cfg: MetaRmScoreConfig, out: OutputDir, done_keys, board=None) -> list[StagePlan]:
    """select (skip done, quarantine unreadable) -> rebatch -> score (actor pool) -> write, as plain
    data. Rebatching makes each engine call its own block, hence its own shard (the unit of resume)."""
    from tribunal.jobs.pipeline.metarm import SCORE_INPUT, MetaRmScoreStage, select_stage
    from tribunal.jobs.pipeline.stages import STATS, write_stage

    return [
        StagePlan("select", select_stage, {"batch_format": "pyarrow", "fn_kwargs": {
            "done_keys": done_keys, "quarantine_dir": out.quarantine, "fs": out.fs, "run": out.run}}, needs=SCORE_INPUT),
        StagePlan("rebatch", None, {"target_num_rows_per_block": cfg.batch_size}, op="repartition"),
        StagePlan("score", MetaRmScoreStage, {"batch_format": "pyarrow", "batch_size": cfg.batch_size,
                                              "fn_constructor_kwargs": {"engine_cfg": cfg.engine_config(), "board": board},
                                              **cfg.pool().map_batches_kwargs()},
                  needs=SCORE_INPUT, emits=tuple(arrow.TRAJECTORY_SCORED.names)),
        StagePlan("write", write_stage, {"batch_format": "pyarrow", "batch_size": None,
                                         "fn_kwargs": {"out_dir": out.path, "fs": out.fs, "schema": arrow.TRAJECTORY_SCORED, "run": out.run}},
                  needs=(c.ID,), emits=tuple(STATS.names)),
    ]


def done_keys(out: OutputDir):
    """Trajectory keys already scored (output) or quarantined."""
    import pyarrow as pa

    from tribunal.jobs.pipeline.metarm import trajectory_keys

    arrays = []
    if out.parts():
        keys = trajectory_keys(out.read(out.parts(), [c.ID, c.SAMPLE_INDEX, c.HINTED]).combine_chunks())
        arrays.append(keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys)
    if out.quarantine_parts():
        # quarantine ids are the trajectory keys of the rows (select_stage writes them so)
        arrays.append(out.read(out.quarantine_parts(), [c.ID])[c.ID].combine_chunks())
    return pa.concat_arrays(arrays) if arrays else pa.array([], pa.string())


def summarize(out: OutputDir, rows_in: int) -> dict:
    import polars as pl

    quarantined = out.quarantine_counts()
    parts = out.parts()
    df = pl.from_arrow(out.read(parts, [c.ID, c.SAMPLE_INDEX, c.HINTED, c.META_SCORE, c.CORRECT])) if parts else None
    rows_out = len(df) if df is not None else 0
    dup = int(df.select([c.ID, c.SAMPLE_INDEX, c.HINTED]).is_duplicated().sum()) if df is not None else 0
    counts = {
        "rows_in": rows_in, "rows_out": rows_out, "quarantined": sum(quarantined.values()), "quarantine_reasons": quarantined,
        "duplicate_keys": dup, "mean_meta_score": float(df[c.META_SCORE].mean()) if rows_out else None,
    }
    if df is not None and df[c.CORRECT].is_not_null().any():
        from tribunal.jobs.grm.grm_math import roc_auc

        lab = df.filter(pl.col(c.CORRECT).is_not_null())
        auc = roc_auc(lab[c.META_SCORE].to_list(), lab[c.CORRECT].to_list())
        counts["labelled"] = len(lab)
        counts["roc_auc"] = None if auc != auc else auc
        counts["accuracy_at_0.5"] = float(((lab[c.META_SCORE] >= 0.5) == lab[c.CORRECT]).mean())
    return counts


def run(cfg: MetaRmScoreConfig, *, job: str = "metarm-score", stream=None) -> dict:
    import ray.data

    from tribunal.cluster.pools import fault_policy
    from tribunal.cluster.ray_cluster import connect
    from tribunal.cluster.storage import arrow_filesystem, parquet_footer
    from tribunal.jobs.pipeline.metarm import SCORE_INPUT
    from tribunal.jobs.pipeline.progress import Progress
    from tribunal.jobs.pipeline.report import RunReport, Units
    from tribunal.jobs.pipeline.runner import run_plan, new_board

    cfg.preflight()
    src, files = trajectory_input(cfg.input, SCORE_INPUT)
    rows_in = sum(parquet_footer(src.fs, f).num_rows for f in files)
    out = OutputDir(cfg.output)
    report = RunReport(job, KIND, cfg, out, Units("trajectories"), stream)
    out.prepare(cfg.settings(), overwrite=cfg.overwrite, kind=KIND, inputs=[cfg.input])
    done = done_keys(out)
    where = connect(cfg.address)
    cfg.check_fits()
    cfg.usage_start()
    todo = max(rows_in - len(done), 0)
    quarantined_before = sum(out.quarantine_counts().values())
    report.say(f"{rows_in} trajectories in {len(files)} file(s), {len(done)} already done; meta-RM {cfg.engine} on {where}")
    report.mark("prepared")
    progress = Progress(job, total=todo, unit="trajectories", rows="scored", stream=report.stream, engines=cfg.concurrency,
                        show_failures=False)
    if todo:
        progress.engines_loading(cfg.engine)
        board = new_board()
        ds = ray.data.read_parquet(files, filesystem=arrow_filesystem(src.fs))
        run_plan(ds, build_stages(cfg, out, done, board), progress, lambda row: progress.update(row["rows"], row["rows"], 0), board)
    report.mark("scored")
    counts = summarize(out, rows_in)
    progress.quarantined = counts["quarantined"] - quarantined_before
    progress.print()
    elapsed = max(report.timer.marks["scored"] - report.timer.marks["prepared"], 1e-9)
    lines = []
    if counts.get("roc_auc") is not None:
        lines.append(f"meta-RM ROC-AUC {counts['roc_auc']:.3f} against correctness, on {counts['labelled']} labelled trajectories")
    usage, usage_line = cfg.usage_report()
    if usage_line:
        lines.append(usage_line)
    return report.finish(
        counts,
        this_run={"scored": progress.rows, "resumed_from": len(done)},
        throughput={"trajectories_per_s": round(progress.rows / elapsed, 3)},
        extra={"model": cfg.model, "input_files": len(files), "fault_policy": fault_policy().as_dict(),
               "engines": {"kind": cfg.engine, "usage": usage}},
        lines=lines,
    )



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("metarm-score", argv)


if __name__ == "__main__":
    sys.exit(main())
