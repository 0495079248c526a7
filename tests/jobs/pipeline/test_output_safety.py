"""Nothing a user does loses data: what --output and --overwrite may touch, and one live run per output."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tribunal.jobs.pipeline.outputs import LEASE, OutputDir
from tribunal.schemas.errors import TribunalError


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _users_folder(tmp_path: Path) -> Path:
    d = tmp_path / "mydata"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "keep.txt").write_text("keep me")
    return d


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_directory_is_never_touched(tmp_path, overwrite):
    d = _users_folder(tmp_path)
    before = _tree(d)
    with pytest.raises(TribunalError, match=r"--output .*mydata is a directory that tribunal did not write \(it holds notes.txt, sub\)"):
        OutputDir(str(d)).prepare_run({"k": 1}, overwrite, kind="trajectory", inputs=[str(tmp_path / "in.parquet")])
    assert _tree(d) == before


@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_a_file_is_kept(tmp_path, overwrite):
    f = tmp_path / "outfile.txt"
    f.write_text("data")
    with pytest.raises(TribunalError, match="is a file, not a directory: use another --output"):
        OutputDir(str(f)).prepare_run({}, overwrite, kind="trajectory")
    assert f.read_text() == "data"


@pytest.mark.parametrize("overwrite", [False, True])
def test_the_input_is_never_the_output(tmp_path, overwrite):
    d = _users_folder(tmp_path)
    (d / "samples.parquet").write_bytes(b"PAR1")
    before = _tree(d)
    with pytest.raises(TribunalError, match="is the input: use another --output"):
        OutputDir(str(d)).prepare_run({}, overwrite, kind="trajectory", inputs=[str(d)])
    with pytest.raises(TribunalError, match="is inside the input"):
        OutputDir(str(d / "out")).prepare_run({}, overwrite, kind="trajectory", inputs=[str(d)])
    assert _tree(d) == before


def test_overwrite_replaces_only_a_tribunal_output_of_the_same_kind(tmp_path):
    out = tmp_path / "traj"
    OutputDir(str(out)).prepare_run({"k": 1}, kind="trajectory").release()
    (out / "part-x.parquet").write_bytes(b"x")  # an earlier run's file
    with pytest.raises(TribunalError, match="holds a run with k=1, this one has k=2: use another --output, or --overwrite"):
        OutputDir(str(out)).prepare_run({"k": 2}, kind="trajectory")
    with pytest.raises(TribunalError, match="holds a tribunal trajectory output, this job writes vote"):
        OutputDir(str(out)).prepare_run({"k": 2}, True, kind="vote")
    OutputDir(str(out)).prepare_run({"k": 2}, True, kind="trajectory")
    assert not (out / "part-x.parquet").exists()
    assert json.loads((out / "_run.json").read_text())["settings"] == {"k": 2}


def test_overwrite_never_deletes_an_input_inside_the_output(tmp_path):
    out = tmp_path / "out"
    OutputDir(str(out)).prepare_run({"k": 1}, kind="sft").release()
    (out / "trajectories").mkdir()
    (out / "trajectories" / "t.parquet").write_bytes(b"x")
    with pytest.raises(TribunalError, match="--overwrite would delete .*out, which holds the input"):
        OutputDir(str(out)).prepare_run({"k": 2}, True, kind="sft", inputs=[str(out / "trajectories")])
    assert (out / "trajectories" / "t.parquet").exists()


def test_the_same_input_relative_or_absolute_is_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "samples.parquet").write_bytes(b"x")
    OutputDir("traj").prepare_run({"input": "samples.parquet"}, kind="trajectory").release()
    OutputDir(str(tmp_path / "traj")).prepare_run({"input": str(tmp_path / "samples.parquet")}, kind="trajectory").release()
    assert json.loads((tmp_path / "traj" / "_run.json").read_text())["settings"]["input"] == str(tmp_path / "samples.parquet")


def test_a_second_live_run_is_refused_at_once(tmp_path):
    """A lease names the live run (host, pid); another live process's lease refuses the second
    run in one line, a dead process's lease is taken over, and this process may re-run."""
    out = tmp_path / "traj"
    first = OutputDir(str(out))
    first.prepare_run({"k": 1}, kind="trajectory")
    lease = json.loads((out / LEASE).read_text())
    assert lease["pid"] == os.getpid()
    first.prepare_run({"k": 1}, kind="trajectory")  # the same process again (an in-process re-run)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / LEASE).write_text(json.dumps({**lease, "pid": other.pid}))
        with pytest.raises(TribunalError, match=rf"is being written by another run \(host .*, pid {other.pid}, since .*\): wait for it"):
            OutputDir(str(out)).prepare_run({"k": 1}, kind="trajectory")
    finally:
        other.kill()
        other.wait()
    second = OutputDir(str(out))
    second.prepare_run({"k": 1}, kind="trajectory")  # the holder died: its lease is stale
    second.release()
    assert not (out / LEASE).exists()


def test_another_hosts_lease_goes_stale_without_heartbeats(tmp_path):
    import time

    from tribunal.jobs.pipeline import outputs

    out = tmp_path / "traj"
    OutputDir(str(out)).prepare_run({}, kind="trajectory").release()
    (out / LEASE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "id": "x", "started": time.time(), "beat": time.time()}))
    with pytest.raises(TribunalError, match="host elsewhere"):
        OutputDir(str(out)).prepare_run({}, kind="trajectory")
    (out / LEASE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "id": "x", "started": 0, "beat": time.time() - outputs.LEASE_STALE_S - 1}))
    OutputDir(str(out)).prepare_run({}, kind="trajectory").release()


def test_input_files_whose_id_types_differ_are_refused_up_front(tmp_path):
    """Integer ids in one file and string ids in another cannot be read as one dataset: refused on
    the driver, naming both files, before any output is made (not an ArrowTypeError after Ray starts)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.jobs.pipeline.outputs import check_inputs, input_files
    from tribunal.schemas.validate import check_input_schema

    ctx = [{"role": "user", "content": "2+2?"}]
    (tmp_path / "in").mkdir()
    pq.write_table(pa.Table.from_pylist([{"id": 1, "context": ctx, "responses": ["4", "5"]}]), tmp_path / "in" / "a.parquet")
    pq.write_table(pa.Table.from_pylist([{"id": "s1", "context": ctx, "responses": ["4", "5"]}]), tmp_path / "in" / "b.parquet")
    fs, files = input_files(str(tmp_path / "in"))
    with pytest.raises(TribunalError, match=r"input files disagree on column 'id': .*a.parquet has int64, .*b.parquet has string"):
        check_inputs(fs, files, check_input_schema)
    pq.write_table(pa.Table.from_pylist([{"id": 2, "context": ctx, "responses": ["4", "5"]}]), tmp_path / "in" / "b.parquet")
    assert check_inputs(fs, files, check_input_schema) == 2
