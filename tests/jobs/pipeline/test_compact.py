"""`tribunal compact`: an older output (one small file per batch, no commit records) becomes one
committed file with the same rows; a second run changes nothing."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from tribunal.cluster import storage
from tribunal.jobs.compact import CompactConfig, run
from tribunal.jobs.pipeline.outputs import OutputDir


def test_compact_merges_an_older_output_idempotently(tmp_path, capsys):
    from tribunal.jobs.cli import run_main

    d = tmp_path / "traj"
    (d / "_quarantine").mkdir(parents=True)
    rows = 0
    for i in range(40):  # the old layout: one file per engine batch
        pq.write_table(pa.table({"id": [f"s{i}-{j}" for j in range(5)], "x": list(range(5))}), d / f"part-{i:04d}.parquet")
        rows += 5
    for i in range(3):
        pq.write_table(pa.table({"id": [f"q{i}"], "reason": ["bad"]}), d / "_quarantine" / f"part-q{i}.parquet")
    before = pa.concat_tables([pq.read_table(p) for p in sorted(d.glob("part-*.parquet"))]).sort_by("id")

    assert run_main("compact", ["--input", str(d), "--target-file-mb", "1"]) == 0
    line = next(l for l in capsys.readouterr().err.splitlines() if "files (" in l)
    assert "43 files" in line and "-> 2 files" in line, line  # the data and the quarantine: one file each
    out = OutputDir(str(d))
    assert len(out.parts()) == 1 and len(out.quarantine_parts()) == 1
    assert out.read(out.parts()).sort_by("id").equals(before)
    assert sorted(out.done_ids().to_pylist()) == sorted(before["id"].to_pylist() + ["q0", "q1", "q2"])
    assert [p.name for p in d.glob("part-*.parquet")] == [os.path.basename(out.parts()[0])]  # inputs gone

    again = run(CompactConfig(input=str(d), target_file_mb=1))
    assert again["merged_files"] == 0 and again["after"] == again["before"] == {"files": 2, "bytes": again["after"]["bytes"], "rows": rows + 3}
    assert out.parts() == [storage.join(str(d), os.path.basename(out.parts()[0]))]


def test_compact_of_nothing_is_one_line(tmp_path, capsys):
    from tribunal.jobs.cli import run_main

    assert run_main("compact", ["--input", str(tmp_path / "none")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no committed part files to compact" in err[0]
