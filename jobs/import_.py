"""import: public reward-benchmark files in, canonical samples out (CPU, no Ray).

Input: a file or a directory of files (``.parquet``, ``.json``, ``.jsonl``; local or ``s3://``)
in one of the layouts of ``tribunal.schemas.importers`` (RewardBench, RM-Bench, RMB best-of-n and
pairwise, JudgeBench, HelpSteer2-style ratings, verl), recognised by their columns or named with
``--layout``. Every row is validated like any job input: bad rows are quarantined with a reason.

Output: ``OUT/part-00000.parquet`` in ``importers.IMPORTED`` (the canonical sample schema plus
``subset``, ``data_source`` and ``reference``), ``OUT/_quarantine/`` and ``OUT/_manifest.json``
(counts per file and layout; rows in = samples out + quarantined, RM-Bench rows counting 9
pairs each). Every job takes the output as ``--input``; ``eval --samples`` reads its subsets. A
re-run with other settings into the same output is refused unless ``--overwrite``.

Run::

    tribunal import --input reward-bench/filtered.jsonl --output samples/
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from tribunal.jobs.pipeline.config import check, opt
from tribunal.schemas import columns as c
from tribunal.schemas import importers
from tribunal.schemas.errors import TribunalError

EXTENSIONS = (".parquet", ".json", ".jsonl", ".ndjson")
KIND = "imported_sample"  # what the output holds (its run record's kind)


@dataclass(frozen=True)
class ImportConfig:
    """An import of benchmark files into canonical samples."""

    input: str = opt("", "benchmark file or directory (.parquet, .json, .jsonl; local path or s3://...)")
    output: str = opt("", "output directory for the canonical samples")
    layout: str = opt("auto", "input layout, or auto to recognise it from the columns", choices=("auto", *importers.LAYOUTS))
    rating: str = opt("helpfulness", "helpsteer2 layout: the rating column used as labels")
    source: str = opt("", "data_source recorded on every sample (default: the layout's name; verl keeps its own)")
    overwrite: bool = opt(False, "replace an import written with other settings (only ever a tribunal import)")

    def __post_init__(self) -> None:
        check(bool(self.input), "input", "is required")
        check(bool(self.output), "output", "is required")
        check(self.layout in ("auto", *importers.LAYOUTS), "layout", f"must be auto or one of {importers.LAYOUTS}, got {self.layout!r}")

    def settings(self) -> dict:
        """The options that fix the samples; a re-run into the same output must match them."""
        keys = ("input", "layout", "rating", "source")
        return {key: getattr(self, key) for key in keys}


def list_inputs(fs, path: str) -> list[str]:
    if not fs.exists(path):
        raise TribunalError(f"input not found: {path}")
    if fs.isfile(path):
        return [path]
    files = sorted(p for p in fs.find(path) if p.lower().endswith(EXTENSIONS) and not p.rsplit("/", 1)[-1].startswith(("_", ".")))
    if not files:
        raise TribunalError(f"input has no {', '.join(EXTENSIONS)} files: {path}")
    return files


def _with_ids(rows: list[dict]) -> list[dict]:
    """Give rows without an id the content-derived one now, so the metadata can follow them."""
    from tribunal.schemas.validate import derive_id

    for r in rows:
        if r.get(c.ID) is None:
            try:
                ctx = [{c.ROLE: str(m[c.ROLE]).lower(), c.CONTENT: m[c.CONTENT]} for m in r[c.CONTEXT]]
                r[c.ID] = derive_id(ctx, list(r[c.RESPONSES]))
            except (TypeError, KeyError):
                pass  # malformed content: the validator quarantines the row with its reason
    return rows


def run(cfg: ImportConfig, *, stream=None) -> dict:
    import pyarrow as pa

    from tribunal.cluster import storage
    from tribunal.jobs.pipeline.outputs import OutputDir, Timer
    from tribunal.schemas.validate import normalize

    stream = stream or sys.stderr
    timer = Timer()
    fs, path = storage.resolve(cfg.input)
    files = list_inputs(fs, path)
    raw_rows: list[dict] = []
    per_file = {}
    for f in files:
        name = storage.display(fs, f)
        records = importers.read_records(fs.cat_file(f), name)
        if not records:
            per_file[name] = {"layout": None, "records": 0, "rows": 0}
            continue
        layout = cfg.layout if cfg.layout != "auto" else importers.detect_layout(records[0].keys(), name)
        missing = [col for col in importers.SIGNATURES[layout] if col not in records[0]]
        if missing:
            raise TribunalError(f"{name}: no {missing[0]!r} column for layout {layout}")
        rows = [r | {c.SOURCE_PATH: name} for r in importers.to_raw(records, layout, rating=cfg.rating, source=cfg.source)]
        per_file[name] = {"layout": layout, "records": len(records), "rows": len(rows)}
        raw_rows.extend(rows)
        print(f"[import] {name}: {layout}, {len(records)} records -> {len(rows)} rows", file=stream, flush=True)
    raw = importers.raw_table(_with_ids(raw_rows))
    valid, quarantine = normalize(raw, need_unique_max=False)
    meta: dict[str, tuple] = {}
    for r in raw_rows:
        meta.setdefault(r.get(c.ID), (r.get(importers.SUBSET), r.get(importers.DATA_SOURCE), r.get(importers.REFERENCE)))
    cols = list(zip(*(meta[i] for i in valid[c.ID].to_pylist()))) or [[], [], []]
    table = valid
    for name, values in zip((importers.SUBSET, importers.DATA_SOURCE, importers.REFERENCE), cols):
        table = table.append_column(name, pa.array(list(values), pa.string()))
    from tribunal.jobs.pipeline.report import RunReport, Units

    out = OutputDir(cfg.output)
    report = RunReport("import", KIND, cfg, out, Units(input="rows", output="samples"), stream)
    report.timer = timer  # the job's clock, started before the files were read
    out.prepare_run(cfg.settings(), cfg.overwrite, kind=KIND, inputs=[cfg.input])
    out.reset_parts()
    # The only writer of its directory: the file keeps the shard name (as export and filter).
    storage.write_parquet_atomic(out.fs, storage.join(out.path, "part-00000.parquet"), table, importers.IMPORTED, replace=True)
    for p in out.quarantine_parts():
        out.fs.rm(p)
    if quarantine.num_rows:
        from tribunal.schemas import arrow

        out.fs.makedirs(out.quarantine, exist_ok=True)
        storage.write_parquet_atomic(out.fs, storage.join(out.quarantine, "part-00000.parquet"), quarantine, arrow.QUARANTINE, replace=True)
    report.mark("written")
    reasons: dict[str, int] = {}
    for r in quarantine.column(c.REASON).to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    subsets: dict[str, int] = {}
    for s in table.column(importers.SUBSET).to_pylist():
        subsets[str(s)] = subsets.get(str(s), 0) + 1
    # Rows in (after a layout's own expansion: an RM-Bench row is 9 pairs) = samples + quarantined.
    counts = {"rows_in": raw.num_rows, "rows_out": table.num_rows, "samples": table.num_rows, "quarantined": quarantine.num_rows,
              "quarantine_reasons": dict(sorted(reasons.items())), "subsets": dict(sorted(subsets.items()))}
    return report.finish(counts, extra={"files": per_file}, lines=[f"{len(subsets)} subset{'s' if len(subsets) != 1 else ''}: "
                                                                   + ", ".join(f"{s} {n}" for s, n in sorted(subsets.items())[:8])
                                                                   + (", ..." if len(subsets) > 8 else "")])



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("import", argv)


if __name__ == "__main__":
    sys.exit(main())
