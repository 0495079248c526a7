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

import argparse
import sys
import time
from dataclasses import dataclass

from tribunal.cluster.pools import fault_policy
from tribunal.jobs.engines import ENGINES, EngineConfig
from tribunal.jobs.pipeline.config import add_arguments, check, opt, to_dict
from tribunal.jobs.pipeline.outputs import OutputDir, Timer, package_versions, trajectory_input
from tribunal.jobs.pipeline.stages import StagePlan
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


@dataclass(frozen=True)
class MetaRmScoreConfig:
    """A scoring run of a meta-RM over trajectory shards."""

    input: str = opt("", "trajectory shards: a directory or file (local path or s3://...)")
    output: str = opt("", "output directory for scored trajectory shards")
    model: str = opt("", "meta-RM: a one-logit sequence classifier directory (`tribunal train metarm` writes OUT/model)")
    engine: str = opt("transformers", "backend (vllm: its pooling runner)", choices=ENGINES)
    concurrency: int = opt(1, "engine actors in the pool")
    num_gpus_per_actor: float | None = opt(None, "GPUs per engine actor (default: 1 for vllm, 0 for transformers)")
    num_cpus_per_actor: float = opt(1.0, "CPUs per engine actor")
    batch_size: int = opt(16, "trajectories per engine call (one output shard each)")
    dtype: str = opt("auto", "model dtype (auto, float32, bfloat16, float16)")
    device: str = opt("auto", "transformers device: auto, cpu, cuda")
    max_model_len: int | None = opt(None, "vLLM context length limit")
    gpu_memory_utilization: float = opt(0.90, "vLLM share of GPU memory")
    enforce_eager: bool = opt(False, "vLLM: run eagerly, without CUDA graphs or torch.compile (starts much faster; slower steady state on GPU)")
    address: str | None = opt(None, "Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)")
    overwrite: bool = opt(False, "delete an existing output directory first")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(bool(self.model), "model", "is required")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")

    def engine_config(self) -> EngineConfig:
        return EngineConfig(kind=self.engine, model=self.model, task="classify", dtype=self.dtype, device=self.device,
                            max_model_len=self.max_model_len, gpu_memory_utilization=self.gpu_memory_utilization,
                            enforce_eager=self.enforce_eager)

    def settings(self) -> dict:
        return {"input": self.input, "model": self.model}


def build_stages(cfg: MetaRmScoreConfig, out: OutputDir, done_keys) -> list[StagePlan]:
    """select (skip done, quarantine unreadable) -> rebatch -> score (actor pool) -> write, as plain
    data. Rebatching makes each engine call its own block, hence its own shard (the unit of resume)."""
    from tribunal.cluster.pools import plan_pool
    from tribunal.jobs.pipeline.metarm import MetaRmScoreStage, select_stage
    from tribunal.jobs.pipeline.stages import write_stage

    pool = plan_pool(cfg.engine, cfg.concurrency, cfg.num_gpus_per_actor, None, cfg.num_cpus_per_actor)
    return [
        StagePlan("select", select_stage, {"batch_format": "pyarrow", "fn_kwargs": {
            "done_keys": done_keys, "quarantine_dir": out.quarantine, "fs": out.fs, "run": out.run}}),
        StagePlan("rebatch", None, {"target_num_rows_per_block": cfg.batch_size}, op="repartition"),
        StagePlan("score", MetaRmScoreStage, {"batch_format": "pyarrow", "batch_size": cfg.batch_size,
                                              "fn_constructor_kwargs": {"engine_cfg": cfg.engine_config()}, **pool.map_batches_kwargs()}),
        StagePlan("write", write_stage, {"batch_format": "pyarrow", "batch_size": None,
                                         "fn_kwargs": {"out_dir": out.path, "fs": out.fs, "schema": arrow.TRAJECTORY_SCORED, "run": out.run}}),
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
    n_q = sum(quarantined.values())
    counts = {
        "rows_in": rows_in, "rows_out": rows_out, "quarantined": n_q, "quarantine_reasons": quarantined,
        "duplicate_keys": dup, "reconciled": rows_in == rows_out + n_q and dup == 0,
        "mean_meta_score": float(df[c.META_SCORE].mean()) if rows_out else None,
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
    import pyarrow.parquet as pq
    import ray.data

    from tribunal.cluster.ray_cluster import connect
    from tribunal.cluster.storage import arrow_filesystem
    from tribunal.jobs.engines import check_model_dir
    from tribunal.jobs.pipeline.metarm import SCORE_INPUT
    from tribunal.jobs.pipeline.progress import fmt_duration

    stream = stream or sys.stderr
    timer = Timer()
    check_model_dir(cfg.model)
    src, files = trajectory_input(cfg.input, SCORE_INPUT)
    rows_in = 0
    for f in files:
        with src.fs.open(f, "rb") as fh:
            rows_in += pq.ParquetFile(fh).metadata.num_rows
    out = OutputDir(cfg.output)
    out.prepare(cfg.settings(), overwrite=cfg.overwrite)
    done = done_keys(out)
    where = connect(cfg.address)
    print(f"[{job}] {rows_in} trajectories in {len(files)} file(s), {len(done)} already done; {cfg.engine} on {where}", file=stream)
    timer.mark("prepared")
    ds = ray.data.read_parquet(files, filesystem=arrow_filesystem(src.fs))
    for st in build_stages(cfg, out, done):
        ds = st.apply(ds)
    scored = 0
    last = time.time()
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        scored += sum(batch["rows"].to_pylist())
        if time.time() - last > 5:
            print(f"[{job}] {scored} trajectories scored this run", file=stream, flush=True)
            last = time.time()
    timer.mark("scored")
    counts = summarize(out, rows_in)
    elapsed = max(timer.marks["scored"] - timer.marks["prepared"], 1e-9)
    manifest = {
        "job": job, "config": to_dict(cfg), "settings": cfg.settings(), "versions": package_versions(), "model": cfg.model,
        "input_files": len(files), "output": out.display(), "schema": "trajectory_scored", "counts": counts,
        "this_run": {"scored": scored, "resumed_from": len(done)}, "timings_s": timer.marks, "fault_policy": fault_policy().as_dict(),
        "throughput": {"trajectories_per_s": round(scored / elapsed, 3)},
    }
    path = out.write_manifest(manifest)
    extra = f", ROC-AUC {counts['roc_auc']:.3f} vs correct" if counts.get("roc_auc") is not None else ""
    print(f"[{job}] done in {fmt_duration(time.time() - timer.start)}: {counts['rows_out']} scored, {counts['quarantined']} quarantined{extra}", file=stream)
    if not counts["reconciled"]:
        print(f"[{job}] WARNING: counts do not reconcile: {rows_in} in, {counts['rows_out']} out + {counts['quarantined']} quarantined, "
              f"{counts['duplicate_keys']} duplicate keys", file=stream)
    print(f"[{job}] output: {out.display()} (manifest: {path})", file=stream)
    return manifest


def add_cli(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with any of the options below (flags win)")
    add_arguments(parser, MetaRmScoreConfig)


def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("metarm-score", argv)


if __name__ == "__main__":
    sys.exit(main())
