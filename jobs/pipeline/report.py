"""One run report for every job: the manifest's keys, the done line, the reconcile line, the output line.

A recipe builds its own counts (what they mean is the recipe's business) and hands them to
``RunReport.finish``, which checks that they reconcile, writes ``OUT/_manifest.json`` and prints
the same words for the same counts in every job::

    [sample] done in 21s: 24 samples in -> 24 out (96 trajectories), 0 quarantined; counts reconcile
    [sample] parse failures: 2.1% of 96 trajectories (wrong_count 2)
    [sample] output: traj/ (manifest: traj/_manifest.json)

The count block every manifest carries (``counts``), whatever the job:

- ``rows_in``: input units (samples, trajectories, rollouts, prompts ... : ``units.input``);
- ``rows_out``: units that reached the output;
- ``quarantined`` and ``quarantine_reasons``: input units set aside with a reason (``_quarantine/``);
- ``dropped`` (``{reason: n}``): input units a filter decided not to keep, by reason;
- ``duplicate_keys``: output keys present twice (should be 0: a second writer, a bug);
- ``reconciled``: ``rows_in == rows_out + quarantined + sum(dropped)`` and no duplicate key.

A job whose units cannot be matched one to one says so with ``reconcile_note`` (the line then says
why instead of claiming a match).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from tribunal.jobs.pipeline.outputs import OutputDir, Timer, package_versions
from tribunal.jobs.pipeline.progress import fmt_duration

REQUIRED = ("rows_in", "rows_out", "quarantined")


@dataclass(frozen=True)
class Units:
    """The nouns of a job's counts: what one input row is, what one output row is, and what the
    output rows are made of when that differs (a sample's trajectories)."""

    input: str  # e.g. "samples"
    output: str | None = None  # e.g. "samples"; default: the input's noun
    produced: str | None = None  # e.g. "trajectories": the rows written per output unit


def reconcile(counts: dict[str, Any]) -> bool:
    dropped = sum((counts.get("dropped") or {}).values())
    return counts["rows_in"] == counts["rows_out"] + counts["quarantined"] + dropped and not counts.get("duplicate_keys", 0)


def reasons_text(reasons: dict[str, int], sep: str = " ") -> str:
    return ", ".join(f"{k}{sep}{v}" for k, v in reasons.items())


class RunReport:
    """The end of a job, written once: ``finish`` writes the manifest and prints the summary.

    ``job`` is the name in the console prefix (``label`` when label runs sample), ``kind`` the
    output's schema name, ``cfg`` the typed config (recorded whole, and its ``settings()`` if it
    has them). Start it when the job starts: its timer gives ``timings_s``.
    """

    def __init__(self, job: str, kind: str, cfg: Any, out: OutputDir, units: Units, stream=None):
        self.job, self.kind, self.cfg, self.out, self.units = job, kind, cfg, out, units
        self.stream = stream or sys.stderr
        self.timer = Timer()

    def say(self, text: str) -> None:
        print(f"[{self.job}] {text}", file=self.stream, flush=True)

    def mark(self, name: str) -> None:
        self.timer.mark(name)

    def finish(self, counts: dict[str, Any], *, this_run: dict | None = None, throughput: dict | None = None,
               extra: dict | None = None, lines: tuple[str, ...] | list[str] = (), reconcile_note: str | None = None,
               manifest_path: str | None = None, quiet: bool = False) -> dict:
        """Write the manifest and print the done, extra, reconcile and output lines; returns the manifest.

        ``counts`` must hold ``REQUIRED``; ``reconciled`` is computed here. ``extra``: job-specific
        top-level manifest keys. ``lines``: job-specific summary lines (printed after the done line).
        ``quiet``: write the manifest and release the output, print nothing (a second output of a
        job whose summary another report prints: rft-filter's meta-RM corpus).
        """
        from tribunal.jobs.pipeline.config import to_dict

        missing = [k for k in REQUIRED if k not in counts]
        if missing:
            raise ValueError(f"RunReport.finish({self.job}): counts lack {missing}")
        counts = {"quarantine_reasons": {}, "dropped": {}, "duplicate_keys": 0, **counts}
        counts["reconciled"] = reconcile(counts)
        if reconcile_note:
            counts["reconcile_note"] = reconcile_note
        self.timer.mark("finished")
        elapsed = time.time() - self.timer.start
        settings = self.cfg.settings() if hasattr(self.cfg, "settings") else None
        manifest = {
            "job": self.job,
            "kind": self.kind,
            "schema": self.kind,
            "config": to_dict(self.cfg),
            "settings": settings,
            "versions": package_versions(),
            "output": self.out.display(),
            "units": {"input": self.units.input, "output": self.units.output or self.units.input, "produced": self.units.produced},
            "counts": counts,
            "this_run": this_run or {},
            "timings_s": self.timer.marks,
            "throughput": throughput or {},
            **(extra or {}),
        }
        path = self.out.write_manifest(manifest, manifest_path)
        if quiet:
            self.out.release()
            return manifest
        self.say(self.done_line(counts, elapsed))
        for line in lines:
            self.say(line)
        if not counts["reconciled"]:
            self.say("WARNING: " + self.mismatch_line(counts, reconcile_note))
        self.say(f"output: {self.out.display()} (manifest: {path})")
        self.out.release()
        return manifest

    def done_line(self, counts: dict[str, Any], elapsed: float) -> str:
        u = self.units
        out_unit = u.output or u.input
        text = f"done in {fmt_duration(elapsed)}: {counts['rows_in']} {u.input} in -> {counts['rows_out']} "
        text += "out" if out_unit == u.input else out_unit
        if u.produced and "rows_written" in counts:
            text += f" ({counts['rows_written']} {u.produced})"
        q = counts["quarantined"]
        text += f", {q} quarantined" + (f" ({reasons_text(counts['quarantine_reasons'])})" if q and counts["quarantine_reasons"] else "")
        if counts["dropped"]:
            text += f", {sum(counts['dropped'].values())} dropped ({reasons_text(counts['dropped'])})"
        return text + ("; counts reconcile" if counts["reconciled"] else "; counts DO NOT reconcile")

    def mismatch_line(self, counts: dict[str, Any], note: str | None) -> str:
        dropped = sum(counts["dropped"].values())
        text = (f"counts do not reconcile: {counts['rows_in']} in != {counts['rows_out']} out + {counts['quarantined']} quarantined"
                + (f" + {dropped} dropped" if dropped else ""))
        if counts["duplicate_keys"]:
            text += f"; {counts['duplicate_keys']} duplicate keys (two runs wrote into this output at once?)"
        return text + (f": {note}" if note else "")


def parse_failure_line(failures: int, trajectories: int, reasons: dict[str, int]) -> str:
    """The one parse-failure figure, with its one definition: trajectories whose scores could not
    be parsed, as a share of all trajectories the job sampled (or read)."""
    rate = 100.0 * failures / trajectories if trajectories else 0.0
    return f"parse failures: {rate:.1f}% of {trajectories} trajectories" + (f" ({reasons_text(reasons)})" if reasons else "")
