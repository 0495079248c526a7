"""label: sample then vote, one command (with ``--meta-rm``: sample, score with the meta-RM, then
vote guided by it, SPEC section 5).

Input schema: as ``sample`` (reward samples). Output: ``OUT/trajectories/`` (``sample``'s shards,
resumable), with ``--meta-rm`` ``OUT/scored/`` (``metarm-score``'s shards), and ``OUT/votes/`` (one
row per sample, ``tribunal.schemas.arrow.VOTE``), each with a manifest.

Run::

    tribunal label --input samples.parquet --output out/ --model PATH --k 8 [--meta-rm ckpt/metarm/model --k-meta 4]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.grm import grm_math
from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.sample import SampleConfig
from tribunal.jobs.vote import VoteConfig


@dataclass(frozen=True)
class LabelConfig(SampleConfig):
    """A sampling run plus how its trajectories are voted."""

    tie: str = opt("random", "tie protocol for accuracy: random, half, strict", choices=grm_math.TIE_PROTOCOLS)
    meta_rm: str | None = opt(None, "meta-RM directory: score the trajectories with it and vote guided by it")
    k_meta: int | None = opt(None, "with --meta-rm: trajectories kept by meta score out of k (default: ceil(k/2))")

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.k_meta is None or self.meta_rm is not None, "k_meta", "needs --meta-rm")
        check(self.k_meta is None or 1 <= self.k_meta <= self.k, "k_meta", f"must be in 1..k ({self.k}), got {self.k_meta}")
        check(self.tie in grm_math.TIE_PROTOCOLS, "tie", f"must be one of {grm_math.TIE_PROTOCOLS}, got {self.tie!r}")

    def sample_config(self) -> SampleConfig:
        from tribunal.cluster.storage import join

        return self.sampling_part(join(self.output, "trajectories"))

    def metarm_config(self):
        from tribunal.cluster.storage import join
        from tribunal.jobs.metarm_score import MetaRmScoreConfig

        return MetaRmScoreConfig(input=join(self.output, "trajectories"), output=join(self.output, "scored"), model=self.meta_rm,
                                 batch_size=self.batch_size, **self.engine_options())

    def vote_config(self) -> VoteConfig:
        from tribunal.cluster.storage import join

        source = "scored" if self.meta_rm else "trajectories"
        return VoteConfig(input=join(self.output, source), output=join(self.output, "votes"), k=self.k, tie=self.tie, seed=self.seed,
                          meta="on" if self.meta_rm else "off", k_meta=self.k_meta, overwrite=self.overwrite)


def run(cfg: LabelConfig, *, stream=None) -> dict:
    from tribunal.jobs import sample, vote

    if cfg.meta_rm:  # checked before the sampling it would otherwise follow by minutes
        from tribunal.jobs.engines import check_model_dir

        check_model_dir(cfg.meta_rm)
    sampled = sample.run(cfg.sample_config(), job="label", stream=stream)
    if sampled["counts"]["trajectories"] == 0:
        print("[label] nothing to vote on: every input row was quarantined (see the reasons above)", file=stream or sys.stderr)
        return {"sample": sampled, "vote": None}
    scored = None
    if cfg.meta_rm:
        from tribunal.jobs import metarm_score

        scored = metarm_score.run(cfg.metarm_config(), job="label", stream=stream)
    voted = vote.run(cfg.vote_config(), job="label", stream=stream)
    return {"sample": sampled, "metarm_score": scored, "vote": voted}



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("label", argv)


if __name__ == "__main__":
    sys.exit(main())
