"""sample: draw k GRM trajectories for every reward sample.

Input schema: Parquet file or directory (local path or ``s3://``), one reward sample per row:
``id`` (optional), ``context`` (list of {role, content}) or ``prompt``, ``responses`` (list of
strings), ``labels`` (optional, one per response); or the pairwise form ``prompt``/``chosen``/
``rejected``. See ``tribunal.schemas.validate``.

Output schema: ``OUT/part-*.parquet`` in ``tribunal.schemas.arrow.TRAJECTORY``; one row is one sampled
GRM generation for one sample, keyed by (id, sample_index, hinted), with its response order,
raw text, scores mapped back to the original order (null on a parse failure, whose reason is
in ``parse_error``) and ``correct`` when labels exist. Bad input rows go to ``OUT/_quarantine/``.

Run::

    tribunal sample --input samples.parquet --output traj/ --model PATH --k 32
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from tribunal.jobs.grm.grm_math import HINT_MODES
from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.engines import SamplingConfig
from tribunal.jobs.pipeline.engine_job import EngineJobConfig, default_template
from tribunal.jobs.pipeline.outputs import OutputDir, check_inputs, duplicate_input_ids, input_files
from tribunal.jobs.pipeline.stages import StagePlan
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

KIND = "trajectory"


@dataclass(frozen=True)
class SampleConfig(EngineJobConfig):
    """Everything that defines a sampling run."""

    output: str = opt("", "output directory for trajectory shards (local path or s3://...)")
    model: str = opt("", "GRM: a local model directory (config.json + tokenizer)")
    k: int = opt(8, "trajectories per sample (non-hinted)")
    template: str | None = opt(
        None, "prompt template: default, single, rm_r1_pairwise, toy, toy_single, or a template file "
        "(default: the template the model records in tribunal_model.json, else default)")
    batch_size: int = opt(16, "samples per engine call (one output shard each)")
    temperature: float = opt(1.0, "sampling temperature (0 = greedy)")
    top_p: float = opt(1.0, "nucleus sampling mass")
    max_tokens: int = opt(512, "max new tokens per trajectory")
    seed: int = opt(0, "run seed: fixes permutations and sampling")
    orders: str = opt("random", "response orders of a sample's k trajectories: random (each drawn on its own) or balanced (every response in every slot as evenly as k allows)", choices=("random", "balanced"))
    target_file_mb: float = opt(256.0, "output files are merged to about this size (MiB); each engine batch is committed on its own first")
    hint: str = opt("never", "hinted sampling mode (used by rft)", choices=HINT_MODES, cli=False)
    require_labels: bool = opt(False, "quarantine samples without labels (rft)", cli=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.template is None:  # what the model was trained on, recorded with it
            object.__setattr__(self, "template", default_template(self.model))
        check(self.k >= 1, "k", f"must be >= 1, got {self.k}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.hint in HINT_MODES, "hint", f"must be one of {HINT_MODES}, got {self.hint!r}")
        check(self.orders in ("random", "balanced"), "orders", f"must be random or balanced, got {self.orders!r}")
        check(0 <= self.temperature <= 2, "temperature", f"must be in [0, 2] (vLLM's range), got {self.temperature}")
        check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        check(self.target_file_mb > 0, "target_file_mb", f"must be > 0, got {self.target_file_mb}")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens)

    def sampling_part(self, output: str) -> SampleConfig:
        """Just the sampling options of this config (or of a subclass's), writing to ``output``."""
        return SampleConfig(**{**{f.name: getattr(self, f.name) for f in dataclasses.fields(SampleConfig)}, "output": output})

    def settings(self) -> dict:
        """The options that fix the results; a resumed run must match them."""
        keys = ("input", "model", "k", "template", "temperature", "top_p", "max_tokens", "seed", "hint", "require_labels")
        # orders is recorded when not the default, so outputs written before it existed still resume
        return {key: getattr(self, key) for key in keys} | ({"orders": self.orders} if self.orders != "random" else {})


def build_stages(cfg: SampleConfig, out: OutputDir, done_ids, duplicate_ids: frozenset = frozenset(), board=None) -> list[StagePlan]:
    """The sample pipeline as plain data: validate -> rebatch -> generate (actor pool) -> write.

    Rebatching into blocks of ``batch_size`` samples makes each engine call its own output block,
    hence its own shard: the unit of resume is one batch, not one input file.
    """
    from tribunal.jobs.grm.protocol import load_template
    from tribunal.jobs.pipeline.stages import ENGINE_STATS, STATS, GenerateStage, validate_stage, write_stage

    template = load_template(cfg.template)
    return [
        StagePlan(
            "validate",
            validate_stage,
            {
                "batch_format": "pyarrow",
                "fn_kwargs": {
                    "need_unique_max": True,
                    "n_range": (template.min_responses, template.max_responses),
                    "require_labels": cfg.require_labels,
                    "done_ids": done_ids,
                    "duplicate_ids": duplicate_ids,
                    "quarantine_dir": out.quarantine,
                    "fs": out.fs,
                    "run": out.run,
                },
            },
            emits=tuple(arrow.SAMPLE.names),
        ),
        StagePlan("rebatch", None, {"target_num_rows_per_block": cfg.batch_size}, op="repartition"),
        StagePlan(
            "generate",
            GenerateStage,
            {
                "batch_format": "pyarrow",
                "batch_size": cfg.batch_size,
                "fn_constructor_kwargs": {
                    "engine_cfg": cfg.engine_config(),
                    "sampling": cfg.sampling(),
                    "template": cfg.template,
                    "k": cfg.k,
                    "seed": cfg.seed,
                    "orders": cfg.orders,
                    "hint": cfg.hint,
                    "quarantine_dir": out.quarantine,
                    "fs": out.fs,
                    "run": out.run,
                    "board": board,
                },
                **cfg.pool().map_batches_kwargs(),
            },
            needs=(c.ID, c.CONTEXT, c.RESPONSES, c.LABELS),
            emits=tuple(arrow.TRAJECTORY.names) + ENGINE_STATS,
        ),
        StagePlan(
            "write",
            write_stage,
            {"batch_format": "pyarrow", "batch_size": None, "fn_kwargs": {"out_dir": out.path, "fs": out.fs, "schema": arrow.TRAJECTORY, "run": out.run}},
            needs=(c.ID,),
            emits=tuple(STATS.names),
        ),
    ]


def summarize(out: OutputDir, rows_in: int) -> dict:
    """Counts from the artefacts themselves (so they cover resumed runs too)."""
    import polars as pl

    quarantined = out.quarantine_counts()
    parts = out.parts()
    cols = [c.ID, c.SAMPLE_INDEX, c.HINTED, c.PARSE_ERROR, c.CORRECT, c.FINISH_REASON, c.PROMPT_TOKENS, c.COMPLETION_TOKENS]
    df = pl.from_arrow(out.read(parts, cols)) if parts else pl.DataFrame(schema={k: pl.Utf8 for k in cols})
    samples_out = df[c.ID].n_unique() if len(df) else 0
    failures = df.filter(pl.col(c.PARSE_ERROR).is_not_null()).group_by(c.PARSE_ERROR).len() if len(df) else None
    labelled = df.filter(pl.col(c.CORRECT).is_not_null()) if len(df) else df
    # A key twice means two runs wrote into this directory at once: report it, never hide it.
    duplicate_keys = int(df.select(list(c.TRAJECTORY_KEY)).is_duplicated().sum()) if len(df) else 0
    return {
        "rows_in": rows_in,
        "rows_out": samples_out,
        "samples_out": samples_out,
        "quarantined": sum(quarantined.values()),
        "quarantine_reasons": quarantined,
        "duplicate_keys": duplicate_keys,
        "rows_written": len(df),
        "trajectories": len(df),
        "hinted": int(df[c.HINTED].sum()) if len(df) else 0,
        "parse_failures": int(failures["len"].sum()) if failures is not None else 0,
        "parse_failure_rate": (float(failures["len"].sum()) / len(df)) if failures is not None and len(df) else 0.0,
        "parse_failure_reasons": dict(sorted(zip(failures[c.PARSE_ERROR], failures["len"]))) if failures is not None else {},
        "correct": int(labelled[c.CORRECT].sum()) if len(labelled) else 0,
        "labelled_trajectories": len(labelled),
        "prompt_tokens": int(df[c.PROMPT_TOKENS].sum()) if len(df) else 0,
        "completion_tokens": int(df[c.COMPLETION_TOKENS].sum()) if len(df) else 0,
    }


def run(cfg: SampleConfig, *, job: str = "sample", stream=None) -> dict:
    """Run the job to completion (resuming what a previous run left) and return its manifest."""
    import ray.data

    from tribunal.cluster.pools import fault_policy
    from tribunal.cluster.ray_cluster import connect
    from tribunal.cluster.storage import arrow_filesystem
    from tribunal.jobs.grm.protocol import load_template
    from tribunal.jobs.pipeline.outputs import Roller
    from tribunal.jobs.pipeline.progress import Progress
    from tribunal.jobs.pipeline.report import RunReport, Units, parse_failure_line
    from tribunal.jobs.pipeline.runner import run_plan, new_board
    from tribunal.schemas.validate import check_input_schema

    load_template(cfg.template)
    cfg.preflight()
    in_fs, files = input_files(cfg.input)
    rows_in = check_inputs(in_fs, files, check_input_schema)
    duplicates = duplicate_input_ids(in_fs, files)
    out = OutputDir(cfg.output)
    report = RunReport(job, KIND, cfg, out, Units("samples", produced="trajectories"), stream)
    done = out.prepare(cfg.settings(), overwrite=cfg.overwrite, kind=KIND, inputs=[cfg.input])
    where = connect(cfg.address)
    cfg.check_fits()
    cfg.usage_start()  # the openai engine's endpoint usage counts from here
    todo = max(rows_in - len(done), 0)
    report.say(f"{rows_in} samples in {len(files)} file(s), {len(done)} already done; k={cfg.k}, template {cfg.template}; {cfg.engine} on {where}")
    report.mark("prepared")
    progress = Progress(job, total=todo, stream=report.stream, engines=cfg.concurrency, rows_total=todo * cfg.k or None)
    quarantined_before = sum(out.quarantine_counts().values())
    roller = Roller(out, int(cfg.target_file_mb * 2**20))

    def on_shard(row: dict) -> None:
        progress.update(row["samples"], row["rows"], row["parse_failures"], row["completion_tokens"],
                        engine_load_s=row["engine_load_s"], request_prompt_tokens=row["request_prompt_tokens"],
                        cached_prompt_tokens=row["cached_prompt_tokens"])
        roller.add(row["bytes"])

    if todo:
        progress.engines_loading(cfg.engine)
        board = new_board()
        ds = ray.data.read_parquet(files, filesystem=arrow_filesystem(in_fs), include_paths=True)
        run_plan(ds, build_stages(cfg, out, done, duplicates, board), progress, on_shard, board)
    report.mark("generated")
    roller.finish()
    report.mark("rolled")
    counts = summarize(out, rows_in)
    report.mark("summarized")
    progress.quarantined = counts["quarantined"] - quarantined_before
    progress.print()
    marks = report.timer.marks
    gen_s = max(marks["generated"] - marks["prepared"], 1e-9)
    steady = progress.steady_rate()
    # Engines load in parallel, one per actor: the slowest start-up is what the run waited for.
    load_s = max(progress.engine_load_s, default=0.0)
    lines = [parse_failure_line(counts["parse_failures"], counts["trajectories"], counts["parse_failure_reasons"])]
    if counts["labelled_trajectories"]:
        lines.append(f"correct trajectories: {counts['correct']}/{counts['labelled_trajectories']}")
    usage, usage_line = cfg.usage_report()  # openai: requests, retries, tokens, cost; None otherwise
    if usage_line:
        lines.append(usage_line)
    return report.finish(
        counts,
        this_run={"samples": progress.samples, "trajectories": progress.rows, "resumed_from": len(done)},
        throughput={
            # This run's generation phase, engine start-up included ...
            "trajectories_per_s": round(progress.rows / gen_s, 3),
            "completion_tokens_per_s": round(progress.tokens / gen_s, 1),
            # ... the same without the engine start-up ...
            "completion_tokens_per_s_loaded": round(progress.tokens / max(gen_s - load_s, 1e-9), 1),
            # ... and the pace between the first and the last shard, once the engines run.
            "steady_trajectories_per_s": round(steady, 3) if steady is not None else None,
        },
        extra={
            "model": cfg.model,
            "input_files": len(files),
            "output_files": {"files": len(out.parts()), "merged_this_run": roller.merged, "target_bytes": roller.target},
            "fault_policy": fault_policy().as_dict(),  # Ray Data retries, restarts and stall guard (cluster/pools.py)
            "engines": {
                "kind": cfg.engine,
                "actors": cfg.concurrency,
                "load_s": [round(x, 2) for x in progress.engine_load_s],  # each actor's engine start-up
                # the generation phase less the engine start-up it waited for
                "generation_s": round(max(gen_s - load_s, 0.0), 2),
                "request_prompt_tokens": progress.request_prompt_tokens,  # sent to the engine, once per request
                "cached_prompt_tokens": progress.cached_prompt_tokens,  # of those, prefix-cache hits (vLLM's count)
                "usage": usage,  # openai engine: requests, retries, failed attempts, tokens, cost estimate
            },
        },
        lines=lines,
    )



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("sample", argv)


if __name__ == "__main__":
    sys.exit(main())
