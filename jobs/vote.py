"""vote: k-way voting over sampled trajectories (CPU, polars; no GPU, no Ray).

Input schema: trajectory shards written by ``sample`` (``tribunal.schemas.arrow.TRAJECTORY``), local or
``s3://``. The first ``--k`` non-hinted trajectories of each sample by ``sample_index`` vote:
``S*_i = sum_j S_ij`` over those with valid scores (parse failures do not vote), ``best =
argmax_i S*_i`` with a tie-break seeded per sample id. One k=32 sampling run gives every smaller k.

Output schema: ``OUT/part-*.parquet`` in ``tribunal.schemas.arrow.VOTE``; one row per sample: totals,
``best`` (0-based index into ``responses``, null when every trajectory failed to parse, i.e. the
sample abstains), ``tied``, ``k`` used, ``valid`` voters, and with labels ``correct`` and the
accuracy ``credit`` under ``--tie random|half|strict``.

Meta-RM guided voting (SPEC section 5): when the trajectories carry ``meta_score`` (written by
``metarm-score``), only the ``--k-meta`` of the k with the highest meta score vote (default
``ceil(k/2)``; ties by trajectory index, unscored trajectories last); ``--meta off`` votes with all
k anyway. ``k`` in the output is then the number of trajectories kept. Recorded in the manifest.

Counts (``OUT/_manifest.json``, the same keys as every job): samples in = votes out (an
abstention is a vote row with a null ``best``) + samples with no trajectory to vote with (only
hinted ones, or none among the first k: dropped as ``no_trajectory_to_vote``). The parse-failure
figure is the one every job prints: the share of the trajectories considered (the first k
non-hinted of each sample, all k in guided voting, not only the kept ones) whose scores did not
parse. A re-run into the same output recomputes it; one with other settings (input, k, tie, seed,
meta, k_meta) is refused unless ``--overwrite``.

Reliability (``OUT/_manifest.json``, ``reliability``; definitions in ``docs/reliability.md``): the
label-free figures of the judge over the trajectories considered, added up chunk by chunk (no
intervals: ``eval`` gives those): position consistency and the flip rate (does a sample's pick
survive a change of response order?), the share of pairwise picks shown first, and
self-consistency (trajectories that pick their sample's vote; Fleiss' kappa of the picks).

Streaming: the ``sample`` job writes all trajectories of a sample into one shard, so shards are
voted in chunks of about ``--chunk-rows`` rows and memory stays bounded whatever the data size.

Run::

    tribunal vote --input traj/ --output votes/ --k 8
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.grm import grm_math
from tribunal.jobs.grm.vote_frame import to_arrow_votes, vote_frame
from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.pipeline.outputs import OutputDir, SeenIds, trajectory_input
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

VOTE_INPUT = (c.ID, c.SAMPLE_INDEX, c.HINTED, c.N_RESPONSES, c.SCORES, c.LABELS)
KIND = "vote"  # what the output holds (its run record's kind)
NO_VOTER = "no_trajectory_to_vote"  # a sample with only hinted trajectories, or none among the first k


@dataclass(frozen=True)
class VoteConfig:
    """A voting run over existing trajectory shards."""

    input: str = opt("", "trajectory shards: a directory or file (local path or s3://...)")
    output: str = opt("", "output directory for vote shards")
    k: int | None = opt(None, "vote with the first k non-hinted trajectories of each sample (default: all)")
    tie: str = opt("random", "tie protocol for accuracy: random (seeded), half (0.5), strict (0)", choices=grm_math.TIE_PROTOCOLS)
    seed: int = opt(0, "seed of the per-sample tie-break")
    chunk_rows: int = opt(2_000_000, "trajectory rows voted per chunk (bounds memory)")
    meta: str = opt("auto", "meta-RM guided voting: auto (on when the input has meta_score), on, off", choices=("auto", "on", "off"))
    k_meta: int | None = opt(None, "guided voting: trajectories kept by meta score out of k (default: ceil(k/2))")
    overwrite: bool = opt(False, "replace a vote output voted with other settings (only ever a tribunal vote output)")

    def __post_init__(self) -> None:
        check(self.meta in ("auto", "on", "off"), "meta", f"must be auto, on or off, got {self.meta!r}")
        check(self.k_meta is None or self.k_meta >= 1, "k_meta", f"must be >= 1, got {self.k_meta}")
        check(self.k_meta is None or self.k is None or self.k_meta <= self.k, "k_meta", f"must be <= k ({self.k}), got {self.k_meta}")
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.k is None or self.k >= 1, "k", f"must be >= 1, got {self.k}")
        check(self.tie in grm_math.TIE_PROTOCOLS, "tie", f"must be one of {grm_math.TIE_PROTOCOLS}, got {self.tie!r}")
        check(self.chunk_rows >= 1, "chunk_rows", f"must be >= 1, got {self.chunk_rows}")

    def settings(self) -> dict:
        """The options that fix the votes; a re-run into the same output must match them."""
        keys = ("input", "k", "tie", "seed", "meta", "k_meta")
        return {key: getattr(self, key) for key in keys}


@dataclass
class VoteTally:
    """What the vote read and wrote, summed over the chunks: the job's counts."""

    k: int | None
    guided: bool
    samples_in: int = 0
    votes: int = 0
    read: int = 0  # trajectory rows read
    considered: int = 0  # the first k non-hinted of each sample
    failures: int = 0  # considered ones whose scores did not parse
    voted: int = 0  # the trajectories that voted (guided: the k_meta kept)
    valid: int = 0
    abstained: int = 0
    tied: int = 0
    judged: int = 0
    correct: int = 0
    credit: float = 0.0

    def add(self, traj, votes) -> None:
        """A chunk: its trajectories (a polars DataFrame) and their votes (``vote_frame``)."""
        import polars as pl

        self.samples_in += _samples_in(traj[c.ID], len(votes))
        self.read += len(traj)
        if self.guided:  # the kept k_meta vote; the parse-failure figure is over all k considered
            considered = ~traj[c.HINTED] if self.k is None else ~traj[c.HINTED] & (traj[c.SAMPLE_INDEX] < self.k)
            self.considered += int(considered.sum())
            self.failures += int((considered & traj[c.SCORES].is_null()).sum())
        else:
            self.considered += int(votes[c.K].sum())
            self.failures += int(votes[c.K].sum() - votes[c.VALID].sum())
        self.votes += len(votes)
        self.voted += int(votes[c.K].sum())
        self.valid += int(votes[c.VALID].sum())
        self.abstained += int(votes[c.BEST].is_null().sum())
        self.tied += int(votes[c.TIED].sum())
        judged = votes.filter(pl.col(c.CREDIT).is_not_null())
        self.judged += len(judged)
        self.credit += float(judged[c.CREDIT].sum())
        self.correct += int(judged[c.CORRECT].sum())

    def counts(self, k_meta) -> dict:
        """Every sample read gets a vote (an abstention when none of its trajectories parsed),
        unless it has no trajectory to vote with (only hinted ones, none among the first k)."""
        no_voter = self.samples_in - self.votes
        return {
            "rows_in": self.samples_in,
            "rows_out": self.votes,
            "quarantined": 0,
            "dropped": {NO_VOTER: no_voter} if no_voter else {},
            "samples": self.votes,
            "trajectories_read": self.read,
            "trajectories_considered": self.considered,
            "trajectories_voted": self.voted,
            "valid_voters": self.valid,
            "parse_failures": self.failures,
            "parse_failure_rate": self.failures / self.considered if self.considered else 0.0,
            "abstained": self.abstained,
            "tied": self.tied,
            "judged": self.judged,
            "accuracy": self.credit / self.judged if self.judged else None,
            "correct": self.correct,
            "guided": self.guided,
            "k_meta": k_meta,
        }


def run(cfg: VoteConfig, *, job: str = "vote", stream=None) -> dict:
    import pyarrow.parquet as pq

    from tribunal.cluster import storage
    from tribunal.jobs.grm import reliability as rl
    from tribunal.jobs.pipeline.files import chunk_files
    from tribunal.jobs.pipeline.report import RunReport, Units, parse_failure_line
    from tribunal.jobs.pipeline.stages import shard_name

    out = OutputDir(cfg.output)
    report = RunReport(job, KIND, cfg, out, Units(input="samples", output="votes"), stream)
    src, files = trajectory_input(cfg.input, VOTE_INPUT)
    guided = _guided(cfg, src, files)
    with src.fs.open(files[0], "rb") as fh:
        judged_orders = c.PERMUTATION in pq.ParquetFile(fh).schema_arrow.names  # every trajectory shard has it
    columns = list(VOTE_INPUT) + ([c.META_SCORE] if guided else []) + ([c.PERMUTATION] if judged_orders else [])
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[cfg.input])
    out.reset_parts()  # a reducer recomputes everything: the same settings give the same votes
    seen, tally = SeenIds(), VoteTally(cfg.k, guided)
    trust = None  # the reliability figures' sums over the chunks
    chunks = chunk_files(src.fs, files, cfg.chunk_rows)
    for i, chunk in enumerate(chunks):
        traj = src.read_polars(chunk, columns)
        votes = vote_frame(traj, cfg.k, cfg.seed, cfg.tie, guided, cfg.k_meta)
        dup = seen.add(votes[c.ID])
        if dup is not None:
            raise TribunalError(
                f"sample {dup!r} has trajectories in more than one chunk of {cfg.input}: "
                "vote needs each sample's trajectories in one shard (as `sample` writes them)"
            )
        ids = votes[c.ID]
        if len(ids):
            name = shard_name([str(ids[0]), str(ids[-1]), str(len(ids))])
            storage.write_parquet_atomic(out.fs, storage.join(out.path, name), to_arrow_votes(votes), arrow.VOTE)
        tally.add(traj, votes)
        if judged_orders:
            trust = rl.add_sums(trust, rl.contributions(_considered_stats(traj, votes, cfg.k), (2,)))
        report.say(f"chunk {i + 1}/{len(chunks)}: {tally.votes} samples voted")
    report.mark("voted")

    k_meta = (cfg.k_meta or (grm_math.default_k_meta(cfg.k) if cfg.k else "ceil(count/2)")) if guided else None
    counts = tally.counts(k_meta)
    acc = f", accuracy {100 * counts['accuracy']:.1f}% ({cfg.tie} ties, {counts['judged']} judged)" if counts["accuracy"] is not None else ""
    guide = f" (meta-RM guided: the {k_meta} with the highest meta score vote)" if guided else ""
    considered = "" if tally.considered == tally.read else f" (the first k non-hinted of each sample, of {tally.read} read)"
    trust_figures = rl.label_free_figures(trust) if trust is not None else None
    return report.finish(
        counts,
        extra={"reliability": trust_figures},
        throughput={"trajectories_per_s": round(tally.considered / max(report.timer.marks["voted"], 1e-9), 1)},
        lines=[f"k={cfg.k or 'all'}{guide}: {tally.abstained} abstained, {tally.tied} tied{acc}",
               parse_failure_line(tally.failures, tally.considered, {}) + considered]
              + ([reliability_line(trust_figures)] if trust_figures else []),
    )


def _considered_stats(traj, votes, k):
    """Per-sample reliability counts of a chunk's considered trajectories (the first k non-hinted)."""
    import polars as pl

    from tribunal.jobs.grm import reliability as rl

    keep = ~pl.col(c.HINTED) if k is None else ~pl.col(c.HINTED) & (pl.col(c.SAMPLE_INDEX) < k)
    return rl.sample_stats(rl.trajectory_picks(traj.filter(keep)), votes)


def reliability_line(f: dict) -> str:
    """One short console line of the label-free figures (the manifest has them all)."""
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}%"

    kappa = "-" if f["fleiss_kappa"] is None else f"{f['fleiss_kappa']:.2f}"
    return (f"reliability: position consistency {pct(f['position_consistency'])}, flip rate {pct(f['flip_rate'])} "
            f"({f['samples_seen_in_two_orders']} samples in 2+ orders); {pct(f['agreement_with_vote'])} of picks agree with the vote, "
            f"Fleiss' kappa {kappa}")


def _samples_in(ids, voted: int) -> int:
    """Samples among a chunk's trajectory rows. ``sample`` writes a sample's rows next to each
    other: then the runs of equal ids are the samples (a few ms for millions of rows), and when
    every sample voted, the runs and the votes agree; otherwise the ids are counted (a hash pass)."""
    runs = int(ids.ne_missing(ids.shift(1)).sum())
    return voted if runs == voted else ids.n_unique()


def _guided(cfg: VoteConfig, src: OutputDir, files: list[str]) -> bool:
    """Whether this run votes guided by the meta-RM (auto: when the shards carry meta scores)."""
    import pyarrow.parquet as pq

    if cfg.meta == "off":
        return False
    with src.fs.open(files[0], "rb") as fh:
        has = c.META_SCORE in pq.ParquetFile(fh).schema_arrow.names
    if cfg.meta == "on" and not has:
        raise TribunalError(f"{src.display(files[0])}: no {c.META_SCORE!r} column: run `tribunal metarm-score` first, or --meta off")
    if cfg.k_meta is not None and not has:
        raise TribunalError(f"--k-meta given but {src.display(files[0])} has no {c.META_SCORE!r} column (run `tribunal metarm-score` first)")
    return has



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("vote", argv)


if __name__ == "__main__":
    sys.exit(main())
