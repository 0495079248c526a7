"""rft: the cold-start data of SPCT from a labelled preference dataset, in one command.

Input schema: labelled reward samples, as for ``sample`` (samples without labels are quarantined
as ``no_labels``). Per sample, ``--n-rft`` non-hinted trajectories with seeded permutations, then
(``--hint auto|always|never``, SPEC section 4) one hinted trajectory for the samples that need it,
drawn in the same streaming pass. Then ``rft-filter`` applies rejective sampling.

Output, under ``OUT/``: ``trajectories/`` (every trajectory, with its ``verdict`` and the sample's
``outcome``; resumable like ``sample``), ``sft/`` (accepted trajectories as chat SFT rows),
``metarm/`` (the meta-RM corpus, label 1 if correct) and ``funnel.json``. See ``tribunal.jobs.rft_filter``.

Run::

    tribunal rft --input prefs.parquet --output rft_run/ --model GRM_PATH --n-rft 3 --hint auto
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tribunal.jobs.grm import grm_math
from tribunal.jobs.pipeline.config import opt
from tribunal.jobs.rft_filter import RftFilterConfig
from tribunal.jobs.sample import SampleConfig


@dataclass(frozen=True)
class RftConfig(SampleConfig):
    """A sampling run with hinted sampling, and the rejective filter applied to it."""

    k: int = opt(3, "N_RFT: non-hinted trajectories per sample (also --n-rft)")
    hint: str = opt("auto", "hinted sampling: auto (samples with no correct trajectory), always, never", choices=grm_math.HINT_MODES)
    require_labels: bool = opt(True, "quarantine samples without labels", cli=False)
    metarm_include_hinted: bool = opt(False, "also put hinted trajectories in the meta-RM corpus")

    def sample_config(self) -> SampleConfig:
        from tribunal.cluster.storage import join

        return self.sampling_part(join(self.output, "trajectories"))

    def filter_config(self) -> RftFilterConfig:
        from tribunal.cluster.storage import join

        return RftFilterConfig(
            input=join(self.output, "trajectories"),
            output=self.output,
            hint=self.hint,
            overwrite=self.overwrite,
            metarm_include_hinted=self.metarm_include_hinted,
            template=self.template,
        )


def run(cfg: RftConfig, *, stream=None) -> dict:
    from tribunal.jobs import rft_filter, sample

    sampled = sample.run(cfg.sample_config(), job="rft", stream=stream)
    if sampled["counts"]["trajectories"] == 0:
        print("[rft] no corpora: every input row was quarantined (see the reasons above)", file=stream or sys.stderr)
        return {"sample": sampled, "funnel": None}
    filtered = rft_filter.run(cfg.filter_config(), job="rft", stream=stream)
    return {"sample": sampled, **filtered}


def add_cli(parser: argparse.ArgumentParser) -> None:
    """rft's own flag beside its config's (which the CLI adds): the paper's name for k."""
    parser.add_argument("--n-rft", dest="k", type=int, metavar="N", help="same as --k")


def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("rft", argv)


if __name__ == "__main__":
    sys.exit(main())
