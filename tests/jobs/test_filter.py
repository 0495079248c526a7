"""filter: agrees with the pure std/EMA filter, reconciles, resumes after SIGKILL byte-identically, S3."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.jobs.demo import synthetic_rollouts
from tribunal.jobs.filter import FilterConfig, run
from tribunal.jobs.rewards import std_filter as sf
from tribunal.schemas import columns as c


def _write(tmp_path: Path, table: pa.Table, parts: int = 3) -> Path:
    d = tmp_path / "scored"
    d.mkdir()
    step = -(-table.num_rows // parts)
    for i in range(parts):
        pq.write_table(table.slice(i * step, step), d / f"part-{i}.parquet")
    return d


def _pure(table: pa.Table, rule: sf.FilterRule, step_prompts: int) -> dict[str, str]:
    rows: dict[str, list] = {}
    for pid, r in zip(table[c.PROMPT_ID].to_pylist(), table[c.REWARD].to_pylist()):
        rows.setdefault(pid, []).append(r)
    order = sorted(rows)
    reasons, _ = sf.filter_prompts(rule, [rows[p] for p in order], step_prompts)
    return dict(zip(order, reasons))


def test_filter_matches_pure_library_and_reconciles(tmp_path):
    table = synthetic_rollouts(300, per_prompt=4, seed=1)
    # hand-made groups: all-equal, one rollout, no reward, NaN
    extra = pa.table({c.PROMPT_ID: ["eq", "eq", "one", "none", "none", "nan", "nan", "nan"],
                      c.ROLLOUT_INDEX: pa.array([0, 1, 0, 0, 1, 0, 1, 2], pa.int32()),
                      c.REWARD: [0.5, 0.5, 0.9, None, None, float("nan"), 0.1, 0.9]})
    table = pa.concat_tables([table.select([c.PROMPT_ID, c.ROLLOUT_INDEX, c.REWARD]), extra])
    src = _write(tmp_path, table)
    cfg = FilterConfig(input=str(src), output=str(tmp_path / "kept"), step_prompts=37, steps_per_shard=2, warmup_steps=2)
    m = run(cfg)
    counts = m["counts"]
    assert counts["reconciled"] and counts["prompts_in"] == 304 and counts["rollouts_in"] == table.num_rows

    dec = pl.read_parquet(tmp_path / "kept" / "_prompts" / "*.parquet")
    want = _pure(table, cfg.rule(), cfg.step_prompts)
    got = dict(zip(dec[c.PROMPT_ID], dec[c.FILTER_REASON]))
    assert got == want
    assert got["one"] == "one_reward" and got["none"] == "no_reward"
    assert dec.filter(pl.col(c.PROMPT_ID) == "nan")[c.PROMPT_STD].item() == pytest.approx(((0.4**2 * 2) / 1) ** 0.5)

    kept = pq.read_table(tmp_path / "kept" / "part-00000.parquet")
    keep_ids = {p for p, r in want.items() if r in sf.KEEP_REASONS}
    assert set(kept[c.PROMPT_ID].to_pylist()) == keep_ids
    assert kept.num_rows == sum(1 for p in table[c.PROMPT_ID].to_pylist() if p in keep_ids)
    assert kept.schema == table.schema  # columns pass through untouched
    by_reason = m["counts"]["prompts_by_reason"]
    # two warm-up steps of 37 prompts; "none" and "one" sort among them and have no spread
    assert by_reason["warmup"] == 72 and by_reason["low_std"] > 0 and by_reason["kept"] > 0

    # state file: seeds a later run whose first step already has a threshold (no warm-up)
    state = json.loads((tmp_path / "kept" / "_filter_state.json").read_text())
    assert state["steps_done"] == 9 and state["state"]["ema"] == pytest.approx(m["final_state"]["ema"])
    m2 = run(FilterConfig(input=str(src), output=str(tmp_path / "seeded"), step_prompts=37, state=str(tmp_path / "kept" / "_filter_state.json")))
    assert m2["counts"]["prompts_by_reason"]["warmup"] == 0
    seeded = pl.read_parquet(tmp_path / "seeded" / "_prompts" / "*.parquet")
    assert seeded[c.STEP].min() == 9 and seeded[c.THRESHOLD].null_count() == 0

    # same settings again: nothing to redo, same bytes; other settings: refused
    before = (tmp_path / "kept" / "part-00000.parquet").read_bytes()
    run(cfg)
    assert (tmp_path / "kept" / "part-00000.parquet").read_bytes() == before
    from tribunal.schemas.errors import TribunalError

    with pytest.raises(TribunalError, match="std_beta"):
        run(FilterConfig(input=str(src), output=str(tmp_path / "kept"), std_beta=0.7))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_filter_resume_after_sigkill_is_byte_identical(tmp_path):
    """The state is persisted after every step: a run killed between two commits of decisions
    (here: before the first, 10000 steps of 2 prompts in one shard) resumes at the step it
    reached, from the per-step journal, to the same bytes."""
    table = synthetic_rollouts(20_000, per_prompt=4, seed=2, with_text=False)
    src = _write(tmp_path, table)
    args = ["--input", str(src), "--step-prompts", "2", "--steps-per-shard", "20000"]
    cli = [sys.executable, "-m", "tribunal.jobs.cli", "filter"]
    clean = tmp_path / "clean"
    subprocess.run(cli + args + ["--output", str(clean)], check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + args + ["--output", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = killed / "_filter_steps.jsonl"

    def steps_done() -> int:
        lines = journal.read_text().splitlines()[1:] if journal.exists() else []
        try:
            return json.loads(lines[-1])["steps_done"] if lines else 0
        except ValueError:  # a line being written
            return 0

    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and steps_done() < 50:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # killed mid-shard: no decision committed, no state file yet, only the per-step journal
    assert not (killed / "part-00000.parquet").exists() and not list((killed / "_prompts").glob("part-*"))
    assert not (killed / "_filter_state.json").exists()
    at_kill = [json.loads(line) for line in journal.read_text().splitlines()[1:] if line.endswith("}")]
    assert [e["steps_done"] for e in at_kill] == list(range(1, len(at_kill) + 1)) and len(at_kill) >= 50
    r = subprocess.run(cli + args + ["--output", str(killed)], check=True, capture_output=True, text=True, timeout=300)
    assert "resuming at step" in r.stderr
    resumed_at = json.loads((killed / "_manifest.json").read_text())["this_run"]["resumed_at_step"]
    assert resumed_at >= len(at_kill) - 1 and 50 <= resumed_at < 10000  # (a torn last line is ignored)
    assert _files(killed) == _files(clean)
    assert json.loads((killed / "_filter_state.json").read_text()) == json.loads((clean / "_filter_state.json").read_text())


def test_filter_on_s3(s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir("filter-bucket")
    table = synthetic_rollouts(200, per_prompt=4, seed=3)
    with fs.open("filter-bucket/in/part-0.parquet", "wb") as f:
        pq.write_table(table, f)
    m = run(FilterConfig(input="s3://filter-bucket/in", output="s3://filter-bucket/out", step_prompts=20))
    assert m["counts"]["reconciled"]
    with fs.open("filter-bucket/out/part-00000.parquet", "rb") as f:
        kept = pq.read_table(f)
    assert kept.num_rows == m["counts"]["rollouts_kept"] > 0
    assert fs.exists("filter-bucket/out/_filter_state.json")


def test_filter_cli_names_missing_column(tmp_path):
    pq.write_table(pa.table({c.PROMPT_ID: ["a"], "score": [1.0]}), tmp_path / "x.parquet")
    r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", "filter", "--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "'reward'" in lines[0] and "x.parquet" in lines[0]


@pytest.mark.parametrize("extra", [None, "timestamp"])
def test_kept_rows_are_the_input_rows_with_the_input_types(tmp_path, extra):
    """Kept rollouts come back row for row, in input order, with the input's exact Arrow types:
    written by polars' streaming sink for plain types (64-bit offsets in polars, the input's
    schema stored), by the pyarrow writer for types polars would not round-trip (a timestamp)."""
    import pyarrow.compute as pc

    from tribunal.jobs.pipeline import files

    table = synthetic_rollouts(200, per_prompt=4, seed=2)
    if extra:
        table = table.append_column("seen_at", pa.array(range(table.num_rows), pa.int64()).cast(pa.timestamp("ms", tz="UTC")))
    assert files.polars_writes_exactly(table.schema) is (extra is None)
    src = _write(tmp_path, table)
    run(FilterConfig(input=str(src), output=str(tmp_path / "kept"), step_prompts=16, warmup_steps=1))
    dec = pl.read_parquet(tmp_path / "kept" / "_prompts" / "*.parquet").filter(pl.col(c.KEPT))
    want = table.filter(pc.is_in(table[c.PROMPT_ID], value_set=pa.array(dec[c.PROMPT_ID].to_list())))
    kept = pq.read_table(tmp_path / "kept" / "part-00000.parquet")
    assert 0 < kept.num_rows < table.num_rows
    assert kept.schema == table.schema and kept.equals(want)


def test_console_formats_the_threshold(tmp_path):
    """No raw Python values on the console: the EMA with four significant digits, a fixed
    threshold as such (it used to print `ema None` and `ema 2.918805865146921`)."""
    import io
    import re

    src = _write(tmp_path, synthetic_rollouts(64, per_prompt=4, seed=4))
    err = io.StringIO()
    m = run(FilterConfig(input=str(src), output=str(tmp_path / "a"), step_prompts=8), stream=err)
    ema = m["final_state"]["ema"]
    assert f"ema {ema:.4g} (threshold {0.5 * ema:.4g}) after 8 steps" in err.getvalue()
    err = io.StringIO()
    run(FilterConfig(input=str(src), output=str(tmp_path / "b"), std_min=0.05, step_prompts=64), stream=err)
    assert "fixed threshold 0.05 after 1 step;" in err.getvalue()
    assert "None" not in err.getvalue() and not re.search(r"\d\.\d{6,}", err.getvalue())
