"""rft-filter: rejective filtering of trajectories into the SFT and meta-RM corpora (CPU, polars).

Input schema: trajectory shards (``tribunal.schemas.arrow.TRAJECTORY``) with labels, as ``rft`` (or
``sample``) writes them. Every sample gets one funnel outcome (SPEC section 4): ``accepted``,
``too_easy`` (all non-hinted trajectories correct), ``no_correct`` (not even a kept hinted one),
or ``invalid`` (quarantined input, counted from the input's ``_quarantine/``); every trajectory is
``accepted`` or rejected with a reason (``incorrect``, a parse-failure reason, ``too_easy``,
``hint_unused``). Rules come from ``--hint auto|always|never``, so a corpus can be rebuilt with
other rules without regenerating anything.

Output schemas: ``OUT/sft/part-*.parquet`` (``arrow.SFT``: one row per accepted trajectory, the
chat messages exactly as the GRM saw them plus the completion) and ``OUT/metarm/part-*.parquet``
(``arrow.METARM``: one row per non-hinted trajectory, the meta-RM prompt and the trajectory as
user and assistant turns, label 1 if correct), each with a manifest, and ``OUT/funnel.json``.

Counts: samples in (the sampling run's count) = accepted + too_easy + no_correct + invalid (the
funnel, in ``sft/_manifest.json`` and ``funnel.json``); trajectories in = meta-RM rows + hinted
ones left out (``metarm/_manifest.json``). The corpora are the outputs: a re-run with other
settings is refused unless ``--overwrite``, which replaces ``sft/`` and ``metarm/`` only (never
``trajectories/``); a run directory holding anything else is refused.

Run::

    tribunal rft-filter --input rft_run/trajectories --output rft_run/ --hint never
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import polars as pl

from tribunal.jobs.grm import grm_math
from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.pipeline.outputs import OutputDir, SeenIds, trajectory_input
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

if TYPE_CHECKING:
    import pyarrow as pa

FILTER_INPUT = (
    c.ID, c.SAMPLE_INDEX, c.HINTED, c.PERMUTATION, c.TEXT, c.PARSE_ERROR, c.LABELS, c.CORRECT, c.CONTEXT, c.RESPONSES,
)

PROGRESS_EVERY_S = 5.0
FUNNEL = "funnel.json"
# What a run directory holds: rft's trajectories, this job's corpora and funnel.
RUN_ROOT_NAMES = ("trajectories", "sft", "metarm", FUNNEL)

# The corpora's Parquet: dictionary-encode the short repeated columns only (a prompt of kilobytes
# is hashed for nothing otherwise) and keep min/max statistics where they help row-group pruning.
CORPUS_PARQUET = {
    "use_dictionary": [c.ID, f"{c.MESSAGES}.list.element.{c.ROLE}"],
    "write_statistics": [c.ID, c.SAMPLE_INDEX],
}


@dataclass(frozen=True)
class RftFilterConfig:
    """Rules for turning trajectories into the RFT corpora."""

    input: str = opt("", "trajectory shards (a directory, local or s3://)")
    output: str = opt("", "run directory: sft/, metarm/ and funnel.json are written under it")
    hint: str = opt("auto", "hinted trajectories kept: auto (only for samples with no correct one), always, never", choices=grm_math.HINT_MODES)
    metarm_include_hinted: bool = opt(False, "also put hinted trajectories in the meta-RM corpus")
    template: str | None = opt(None, "template the trajectories were sampled with (default: read from the input's _run.json)")
    chunk_rows: int = opt(250_000, "trajectory rows read per chunk, one output shard each (bounds memory: two chunks are held)")
    render_rows: int = opt(100_000, "trajectory rows whose prompt pieces are prepared at a time (bounds memory)")
    row_group_rows: int = opt(10_000, "corpus rows rendered and written at a time: one Parquet row group each (prompts are long: bounds memory)")
    overwrite: bool = opt(False, "replace the sft/ and metarm/ corpora of a run with other settings (never trajectories/)")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.hint in grm_math.HINT_MODES, "hint", f"must be one of {grm_math.HINT_MODES}, got {self.hint!r}")
        check(self.chunk_rows >= 1, "chunk_rows", f"must be >= 1, got {self.chunk_rows}")
        check(self.render_rows >= 1, "render_rows", f"must be >= 1, got {self.render_rows}")
        check(self.row_group_rows >= 1, "row_group_rows", f"must be >= 1, got {self.row_group_rows}")

    def settings(self) -> dict:
        """The options that fix the corpora; a re-run into the same run directory must match them."""
        keys = ("input", "hint", "metarm_include_hinted", "template")
        return {key: getattr(self, key) for key in keys}


def _run_starts(ids: pl.Series):
    """Row numbers where a run of equal ids starts."""
    import numpy as np

    run = ids.rle_id().to_numpy()
    return np.flatnonzero(np.diff(run, prepend=-1) != 0)


def verdicts(traj: pl.DataFrame, mode: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rejective sampling column-wise: ``traj`` with ``verdict`` and ``outcome`` added, and one row
    per sample (``id``, ``outcome``, ``accepted``: its number of accepted trajectories). Agrees
    with ``grm_math.rft_verdicts`` (tested).

    ``sample`` and ``rft`` write a sample's rows next to each other, so the samples are the runs
    of equal ids and every per-sample count is a segment sum; rows of a sample that are scattered
    are brought together first (a stable sort by id).
    """
    import numpy as np

    grm_math.hint_wanted(mode, [])  # validates the mode
    names = ["accepted", "too_easy", "no_correct"]
    if not len(traj):
        empty = pl.Series([], dtype=pl.String)
        return (traj.with_columns(empty.alias(c.VERDICT), empty.alias(c.OUTCOME)),
                pl.DataFrame({c.ID: empty, c.OUTCOME: empty, "accepted": pl.Series([], dtype=pl.Int64)}))
    starts = _run_starts(traj[c.ID])
    if traj[c.ID].gather(starts).is_duplicated().any():
        traj = traj.sort(c.ID, maintain_order=True)
        starts = _run_starts(traj[c.ID])
    run = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(traj))))
    hinted = traj[c.HINTED].to_numpy().astype(bool)
    ok = traj[c.CORRECT].to_numpy().astype(bool)
    nonhinted = np.add.reduceat((~hinted).astype(np.int64), starts)
    nonhinted_ok = np.add.reduceat((~hinted & ok).astype(np.int64), starts)
    too_easy = (nonhinted > 0) & (nonhinted_ok == nonhinted)
    use_hint = np.full(len(starts), mode == "always") | ((nonhinted_ok == 0) & (mode == "auto"))
    unused = hinted & ~use_hint[run]
    accepted = ok & ~unused & ~too_easy[run]
    n_accepted = np.add.reduceat(accepted.astype(np.int64), starts)
    outcome = np.where(too_easy, 1, np.where(n_accepted > 0, 0, 2))
    verdict = (
        pl.when(pl.Series(too_easy[run])).then(pl.lit("too_easy"))
        .when(pl.Series(unused)).then(pl.lit("hint_unused"))
        .when(pl.Series(accepted)).then(pl.lit("accepted"))
        .otherwise(pl.coalesce(pl.col(c.PARSE_ERROR), pl.lit("incorrect")))
    )
    outcomes = pl.Series(names, dtype=pl.String)
    t = traj.with_columns(verdict.alias(c.VERDICT), outcomes.gather(outcome[run]).alias(c.OUTCOME))
    per_sample = pl.DataFrame({c.ID: traj[c.ID].gather(starts), c.OUTCOME: outcomes.gather(outcome), "accepted": n_accepted})
    return t, per_sample


def sft_chats(t: pl.DataFrame, template):
    """Accepted trajectories as ``render_frame.Chats`` for SFT rows (``arrow.SFT``): the user turn
    exactly as the GRM saw it (hint line included), the completion as the assistant turn."""
    from tribunal.jobs.grm import render_frame as rf

    shape = rf.Shape.of(t)
    prompt = rf.grm_prompt_parts(template, shape) + rf.hint_parts(template, shape, pl.col(c.LABELS).list.arg_max())
    keep = [pl.col(c.ID), pl.col(c.SAMPLE_INDEX), pl.col(c.HINTED), pl.col(c.PERMUTATION)]
    return rf.chats(t.lazy().filter(pl.col(c.VERDICT) == "accepted"), prompt, c.TEXT, keep)


def metarm_chats(t: pl.DataFrame, include_hinted: bool):
    """Meta-RM rows (``arrow.METARM``) as ``render_frame.Chats``: label 1 iff the trajectory is
    correct (SPEC section 3)."""
    from tribunal.jobs.grm import render_frame as rf

    rows = t.lazy() if include_hinted else t.lazy().filter(~pl.col(c.HINTED))
    keep = [pl.col(c.ID), pl.col(c.SAMPLE_INDEX), pl.col(c.HINTED), pl.col(c.CORRECT).cast(pl.Int8).alias(c.LABEL)]
    return rf.metarm_chats(rows, keep, rf.Shape.of(t))


def _write(out, chats, schema, rows: int) -> None:
    """Join chats and write them, ``rows`` at a time (one row group each)."""
    for lo in range(0, len(chats), rows):
        table = chats.slice(lo, rows).table()
        if c.PROMPT in schema.names:
            table = with_prompt_completion(table)
        out.write(table.select(schema.names).cast(schema))


def with_prompt_completion(table: pa.Table) -> pa.Table:
    """``prompt`` = messages[:-1] and ``completion`` = [messages[-1]] beside ``messages`` (TRL's
    conversational prompt-completion layout), column-wise: every chat here is [user, assistant]."""
    import pyarrow.compute as pc

    messages = table[c.MESSAGES]
    return table.append_column(c.PROMPT, pc.list_slice(messages, 0, 1)).append_column(c.COMPLETION, pc.list_slice(messages, 1, 2))


def _template_of(src: OutputDir, explicit: str | None):
    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import RUN_FILE
    from tribunal.jobs.grm.protocol import load_template

    if explicit:
        return load_template(explicit)
    run_path = storage.join(src.path, RUN_FILE)
    if src.fs.exists(run_path):
        with src.fs.open(run_path, "r") as f:
            name = json.load(f).get("settings", {}).get("template")
        if name:
            return load_template(name)
    raise TribunalError(f"{src.display()}: no {RUN_FILE} says which template was used: pass --template")


@dataclass
class Tally:
    """What the filter saw and wrote, summed over the chunks."""

    samples: int = 0
    trajectories: int = 0
    hinted: int = 0
    hinted_kept: int = 0
    sft_rows: int = 0
    metarm_rows: int = 0
    outcomes: dict = field(default_factory=dict)  # per sample
    verdicts: dict = field(default_factory=dict)  # per trajectory
    accepted_per_sample: dict = field(default_factory=dict)  # accepted trajectories -> samples
    labels: dict = field(default_factory=lambda: {"0": 0, "1": 0})  # meta-RM rows by label

    def judged(self, t: pl.DataFrame, per_sample: pl.DataFrame) -> None:
        """A chunk's verdicts (``verdicts``' two frames)."""
        self.samples += len(per_sample)
        self.trajectories += len(t)
        _count_into(self.outcomes, per_sample[c.OUTCOME])
        for n_acc, cnt in per_sample.filter(pl.col(c.OUTCOME) == "accepted").group_by("accepted").len().iter_rows():
            self.accepted_per_sample[int(n_acc)] = self.accepted_per_sample.get(int(n_acc), 0) + int(cnt)
        _count_into(self.verdicts, t[c.VERDICT])
        self.hinted_kept += len(t.filter(pl.col(c.HINTED) & (pl.col(c.VERDICT) == "accepted")))
        self.hinted += int(t[c.HINTED].sum())

    def written(self, s_chats, m_chats) -> None:
        """A block of corpus rows (``render_frame.Chats``)."""
        import pyarrow.compute as pc

        ones = int(pc.sum(m_chats.kept[c.LABEL]).as_py() or 0)
        self.labels["1"] += ones
        self.labels["0"] += len(m_chats) - ones
        self.sft_rows += len(s_chats)
        self.metarm_rows += len(m_chats)


def _count_into(acc: dict, series: pl.Series) -> None:
    for k, v in series.value_counts().iter_rows():
        acc[k] = acc.get(k, 0) + int(v)


def write_corpora(cfg: RftFilterConfig, src: OutputDir, files: list[str], template, sft: OutputDir, metarm: OutputDir, report) -> Tally:
    """Judge the trajectories chunk by chunk and write both corpora, one shard per chunk each.

    Four lanes (polars, Arrow and Parquet release the GIL): one reads and judges the next chunk;
    one evaluates the prompt pieces of the next ``render_rows`` rows (polars, where fixed costs per
    call make large blocks pay); two join each corpus's pieces into chats and write them
    ``row_group_rows`` at a time (Arrow, Parquet), in order, so a row group is written while it is
    still in cache. A few blocks are alive at most: memory stays bounded.
    """
    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.files import Lanes, chunk_files
    from tribunal.jobs.pipeline.progress import fmt_duration
    from tribunal.jobs.pipeline.stages import shard_name

    tally, seen = Tally(), SeenIds()
    chunks = chunk_files(src.fs, files, cfg.chunk_rows)

    def judge(chunk: list[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
        traj = src.read_polars(chunk, list(FILTER_INPUT))
        unlabelled = traj.filter(pl.col(c.CORRECT).is_null())
        if len(unlabelled):
            raise TribunalError(f"sample {unlabelled[c.ID][0]!r} has no labels: rft-filter needs labelled trajectories")
        return verdicts(traj, cfg.hint)

    last_line = time.monotonic()
    with Lanes("read", "render", "sft", "metarm") as lanes:
        for i, (t, per_sample) in enumerate(lanes.prefetch("read", judge, chunks)):
            dup = seen.add(per_sample[c.ID])
            if dup is not None:
                raise TribunalError(f"sample {dup!r} has trajectories in more than one chunk of {cfg.input}: each sample's trajectories must be in one shard")
            tally.judged(t, per_sample)
            ids = per_sample[c.ID]
            name = shard_name([str(ids[0]), str(ids[-1]), str(len(ids))])
            sft_out = storage.ParquetShardWriter(sft.fs, storage.join(sft.path, name), arrow.SFT, **CORPUS_PARQUET)
            meta_out = storage.ParquetShardWriter(metarm.fs, storage.join(metarm.path, name), arrow.METARM, **CORPUS_PARQUET)

            def pieces(lo: int, t=t):
                part = t.slice(lo, cfg.render_rows)
                return sft_chats(part, template), metarm_chats(part, cfg.metarm_include_hinted)

            for s_chats, m_chats in lanes.map("render", pieces, range(0, len(t), cfg.render_rows), ahead=1):
                lanes.submit("sft", _write, sft_out, s_chats, arrow.SFT, cfg.row_group_rows)
                lanes.submit("metarm", _write, meta_out, m_chats, arrow.METARM, cfg.row_group_rows)
                tally.written(s_chats, m_chats)
                lanes.wait(2)  # the previous slice's writes
            lanes.submit("sft", sft_out.close)
            lanes.submit("metarm", meta_out.close)
            now = time.monotonic()
            if now - last_line >= PROGRESS_EVERY_S or i + 1 == len(chunks):
                last_line, elapsed = now, time.time() - report.timer.start
                eta = f", eta {fmt_duration(elapsed * (len(chunks) - i - 1) / (i + 1))}" if i + 1 < len(chunks) else ""
                report.say(f"chunk {i + 1}/{len(chunks)}: {tally.samples} samples, {tally.trajectories} trajectories "
                           f"({tally.trajectories / elapsed:,.0f}/s), {tally.sft_rows} SFT rows, {tally.metarm_rows} meta-RM rows, "
                           f"{fmt_duration(elapsed)}{eta}")
    return tally


def _check_run_root(root: OutputDir, inputs: list[str]) -> None:
    """The run directory holds ``sft/``, ``metarm/`` and ``funnel.json`` (and ``trajectories/``
    under ``tribunal rft``): refuse one that is a file, an input, or holds anything else."""
    root.check_not_input(inputs)
    root.fs.invalidate_cache(root.path)
    if not root.fs.exists(root.path):
        return
    if not root.fs.isdir(root.path):
        raise TribunalError(f"--output {root.display()} is a file, not a directory: use another --output")
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in root.fs.ls(root.path, detail=False)}
    foreign = sorted(n for n in names if n not in RUN_ROOT_NAMES and not n.startswith((".", "_")))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TribunalError(
            f"--output {root.display()} holds files that are not an rft run's ({shown}): use another --output "
            "(rft-filter writes sft/, metarm/ and funnel.json in a run directory of its own)"
        )


def _samples_in(src: OutputDir, read: int, invalid: int) -> int:
    """Samples in: the sampling run's own count when its manifest says, else those read + invalid."""
    from tribunal.cluster import storage

    path = storage.join(src.path, "_manifest.json")
    if src.fs.exists(path):
        with src.fs.open(path, "r") as f:
            return json.load(f).get("counts", {}).get("rows_in", read + invalid)
    return read + invalid


def run(cfg: RftFilterConfig, *, job: str = "rft-filter", stream=None) -> dict:
    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.report import RunReport, Units, reconcile

    root = OutputDir(cfg.output)
    sft, metarm = OutputDir(storage.join(cfg.output, "sft")), OutputDir(storage.join(cfg.output, "metarm"))
    report = RunReport(job, "sft", cfg, sft, Units(input="samples", output="accepted samples", produced="SFT rows"), stream)
    meta_report = RunReport(job, "metarm", cfg, metarm, Units(input="trajectories", output="meta-RM rows"), stream)
    src, files = trajectory_input(cfg.input, FILTER_INPUT)
    template = _template_of(src, cfg.template)
    _check_run_root(root, [cfg.input])
    for corpus, kind in ((sft, "sft"), (metarm, "metarm")):  # the outputs: the run directory's trajectories/ stay
        corpus.prepare_run(cfg.settings(), cfg.overwrite, kind=kind, inputs=[cfg.input])
    for corpus in (sft, metarm):
        corpus.reset_parts()  # a reducer recomputes everything: the same settings give the same corpora

    tally = write_corpora(cfg, src, files, template, sft, metarm, report)
    report.mark("filtered")

    # The funnel: every sample read has one outcome; the samples `sample` quarantined are invalid.
    quarantine_reasons = src.quarantine_counts()
    invalid = sum(quarantine_reasons.values())
    o = {k: tally.outcomes.get(k, 0) for k in arrow.OUTCOMES} | {"invalid": invalid}
    counts = {"rows_in": _samples_in(src, tally.samples, invalid), "rows_out": o["accepted"], "quarantined": invalid,
              "quarantine_reasons": quarantine_reasons, "dropped": {k: o[k] for k in ("too_easy", "no_correct") if o[k]},
              "rows_written": tally.sft_rows}
    funnel = {
        "rows_in": counts["rows_in"],
        "outcomes": o,
        "reconciled": reconcile(counts),
        "accepted_trajectories_per_sample": {str(k): v for k, v in sorted(tally.accepted_per_sample.items())},
        "trajectories": tally.trajectories,
        "trajectory_verdicts": dict(sorted(tally.verdicts.items())),
        "hinted_kept": tally.hinted_kept,
        "sft_rows": tally.sft_rows,
        "metarm_rows": tally.metarm_rows,
        "metarm_label_balance": tally.labels,
        "hint": cfg.hint,
    }
    funnel_path = storage.join(root.path, FUNNEL)
    storage.write_text_atomic(root.fs, funnel_path, json.dumps(funnel, indent=2))
    throughput = {"trajectories_per_s": round(tally.trajectories / max(report.timer.marks["filtered"], 1e-9), 1)}
    common = {"template": template.name, "funnel": funnel}
    # The meta-RM corpus: one row per trajectory read, hinted ones left out unless asked for.
    left_out = 0 if cfg.metarm_include_hinted else tally.hinted
    meta_report.finish({"rows_in": tally.trajectories, "rows_out": tally.metarm_rows, "quarantined": 0,
                        "dropped": {"hinted": left_out} if left_out else {}},
                       throughput=throughput, extra={**common, "rows": tally.metarm_rows}, quiet=True)
    rejected = ", ".join(f"{k} {v}" for k, v in funnel["trajectory_verdicts"].items() if k != "accepted")
    manifest = report.finish(counts, throughput=throughput, extra={**common, "rows": tally.sft_rows}, lines=[
        f"{tally.trajectories} trajectories: {tally.verdicts.get('accepted', 0)} accepted ({tally.hinted_kept} hinted), "
        f"rejected: {rejected or 'none'}",
        f"meta-RM corpus: {metarm.display()} ({tally.metarm_rows} rows: {tally.labels['1']} correct / {tally.labels['0']} incorrect)",
        f"funnel: {root.display(funnel_path)}",
    ])
    return {"funnel": funnel, "sft": sft.display(), "metarm": metarm.display(), "manifest": manifest}



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("rft-filter", argv)


if __name__ == "__main__":
    sys.exit(main())
