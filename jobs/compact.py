"""compact: merge the committed files of a finished output into files of about the target size.

Input: any tribunal output directory (local path or ``s3://``): trajectories, scores, votes,
corpora; its ``_quarantine/`` too. An output written before commit records first gets a record
per part file. Files no record names (attempts a killed run left) are removed; committed files
under the target are merged, streamed row group by row group, each merged file committed with a
record that replaces its inputs in one step, so a kill at any point leaves every row exactly once.
Idempotent: a second run finds nothing to merge. Run it on a finished output: one a live run is
writing (its lease) is refused. The report (rows before = rows after, files and bytes before and
after) goes to ``OUT/_compact.json``; the output's ``_manifest.json`` stays the writing job's.

Run::

    tribunal compact --input traj/ --target-file-mb 256
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.pipeline.config import check, opt
from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.schemas.errors import TribunalError

KIND = "compaction"
MANIFEST = "_compact.json"  # beside the output's own manifest, which stays the job's that wrote it


@dataclass(frozen=True)
class CompactConfig:
    """A compaction of one output directory."""

    input: str = opt("", "a tribunal output directory (local path or s3://...)")
    target_file_mb: float = opt(256.0, "merge committed files into files of about this size (MiB)")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(self.target_file_mb > 0, "target_file_mb", f"must be > 0, got {self.target_file_mb}")


def _census(out: OutputDir) -> dict:
    from tribunal.cluster import storage

    records = [r for d in (out.path, out.quarantine) for r in storage.commit_records(out.fs, d)[0]]
    return {"files": len(records), "bytes": sum(r.get("bytes", 0) for r in records), "rows": sum(r.get("rows", 0) for r in records)}


def _files(census: dict) -> str:
    return f"{census['files']} file{'s' if census['files'] != 1 else ''} ({census['bytes'] / 2**20:.1f} MiB)"


def run(cfg: CompactConfig, *, stream=None) -> dict:
    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.report import RunReport, Units

    out = OutputDir(cfg.input)
    report = RunReport("compact", KIND, cfg, out, Units(input="rows"), stream)
    if not out.exists() or (not out.parts() and not out.quarantine_parts()):
        raise TribunalError(f"{out.display()}: no committed part files to compact")
    out.hold()  # refused while a run writes it
    for d in (out.path, out.quarantine):
        if not storage.has_commit_layout(out.fs, d) and storage.committed_files(out.fs, d):
            out._adopt_legacy(d)
    removed = sum(storage.remove_garbage(out.fs, d) for d in (out.path, out.quarantine))
    before = _census(out)
    merged = out.roll(int(cfg.target_file_mb * 2**20), final=True)
    after = _census(out)
    if after["rows"] != before["rows"]:  # a merge keeps every row: anything else is a bug, say so
        raise TribunalError(f"{out.display()}: compaction changed the row count {before['rows']} -> {after['rows']}")
    report.mark("compacted")
    return report.finish(
        {"rows_in": before["rows"], "rows_out": after["rows"], "quarantined": 0},
        extra={"before": before, "after": after, "merged_files": merged, "garbage_removed": removed},
        lines=[f"{_files(before)} -> {_files(after)}; {removed} uncommitted or replaced file{'s' if removed != 1 else ''} removed"],
        manifest_path=storage.join(out.path, MANIFEST),
    )



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("compact", argv)


if __name__ == "__main__":
    sys.exit(main())
