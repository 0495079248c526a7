"""The CLI: one-line errors, import hygiene, config files, and stage plans without engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, write_samples

HEAVY = ("torch", "vllm", "transformers", "deepspeed")


def tribunal(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "module", ["tribunal.jobs.cli", "tribunal.jobs.sample", "tribunal.jobs.vote", "tribunal.jobs.label", "tribunal.jobs.grm.protocol", "tribunal.jobs.grm.grm_math", "tribunal.jobs.pipeline.stages",
               "tribunal.jobs.grm.trajectories", "tribunal.jobs.engines", "tribunal.schemas.validate", "tribunal.schemas.arrow", "tribunal.cluster.storage", "tribunal.cluster.pools",
               "tribunal.jobs.eval", "tribunal.jobs.import_", "tribunal.jobs.grm.metrics", "tribunal.schemas.importers",
               "tribunal.cluster.redact", "tribunal.cluster.names", "tribunal.cluster.ray_cluster",
               "tribunal.jobs.score", "tribunal.jobs.filter", "tribunal.jobs.export", "tribunal.jobs.pipeline.scoring", "tribunal.jobs.rewards.prob",
               "tribunal.jobs.rewards.std_filter", "tribunal.jobs.rewards.rule", "tribunal.jobs.rewards.adapters", "tribunal.schemas.rollouts",
               "tribunal.jobs.metarm_score", "tribunal.jobs.pipeline.metarm", "tribunal.jobs.engines.faults", "tribunal.training.data", "tribunal.training.trainer",
               "tribunal.training.sft", "tribunal.training.metarm", "tribunal.jobs.demo", "tribunal.training.toy.recipe", "tribunal.training.toy.task",
               "tribunal.jobs.compact"]
)
def test_light_paths_import_no_heavy_modules(module):
    code = f"import sys, {module}; from tribunal.jobs.cli import build_parser; build_parser(); print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_schemas_import_neither_ray_nor_polars():
    code = "import sys, tribunal.schemas.arrow, tribunal.schemas.validate, tribunal.schemas.columns, tribunal.schemas.rollouts; print([m for m in ('ray', 'polars', 'torch') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_lists_jobs():
    r = tribunal("--help")
    assert r.returncode == 0
    for cmd in ("label", "sample", "vote", "build-tiny-model"):
        assert cmd in r.stdout
    r = tribunal("sample", "--help")
    assert "--num-gpus-per-actor" in r.stdout and "--max-tokens" in r.stdout


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr  # one line, no traceback
    assert "Traceback" not in r.stderr
    return lines[0]


def test_wrong_input_path(tmp_path, tiny_model):
    line = one_error_line(tribunal("sample", "--input", str(tmp_path / "nope.parquet"), "--output", str(tmp_path / "o"), "--model", tiny_model))
    assert "input not found" in line and "nope.parquet" in line


def test_missing_column_names_file_and_column(tmp_path, tiny_model):
    pq.write_table(pa.table({"prompt": ["q"], "answers": [["a"]]}), tmp_path / "bad.parquet")
    line = one_error_line(tribunal("sample", "--input", str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "o"), "--model", tiny_model))
    assert "bad.parquet" in line and "'responses'" in line


def test_wrong_column_type(tmp_path, tiny_model):
    pq.write_table(pa.table({"prompt": ["q"], "responses": [["a"]], "labels": ["x"]}), tmp_path / "bad.parquet")
    line = one_error_line(tribunal("sample", "--input", str(tmp_path / "bad.parquet"), "--output", str(tmp_path / "o"), "--model", tiny_model))
    assert "bad.parquet" in line and "'labels'" in line


def test_model_dir_that_is_not_a_model(tmp_path):
    samples = write_samples(tmp_path / "s.parquet", make_rows(2))
    (tmp_path / "empty").mkdir()
    line = one_error_line(tribunal("sample", "--input", str(samples), "--output", str(tmp_path / "o"), "--model", str(tmp_path / "empty")))
    assert "not a model directory" in line and "empty" in line


def test_bad_config_value_names_key(tmp_path):
    line = one_error_line(tribunal("sample", "--input", "x", "--output", "y", "--model", "z", "--k", "0"))
    assert "'k'" in line
    line = one_error_line(tribunal("sample", "--input", "x", "--output", "y", "--model", "z", "--temperature", "2.5"))
    assert "'temperature'" in line and "[0, 2]" in line
    (tmp_path / "c.yaml").write_text("k: 2\nbogus: 1\n")
    line = one_error_line(tribunal("vote", "--config", str(tmp_path / "c.yaml")))
    assert "c.yaml" in line and "bogus" in line


def test_not_parquet_input(tmp_path, tiny_model):
    (tmp_path / "x.parquet").write_text("not parquet")
    line = one_error_line(tribunal("sample", "--input", str(tmp_path / "x.parquet"), "--output", str(tmp_path / "o"), "--model", tiny_model))
    assert "x.parquet" in line and "not a readable Parquet file" in line


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    from tribunal.jobs.pipeline.config import load_config
    from tribunal.jobs.label import LabelConfig

    cfg = load_config(LabelConfig, None, str(path))
    assert cfg.k >= 1 and cfg.model


def test_stage_plan_for_a_gpu_cluster_without_an_engine():
    """Plan apart from execution: GPU counts and pool sizes are checked without starting vLLM."""
    from tribunal.jobs.pipeline.config import load_config
    from tribunal.jobs.label import LabelConfig
    from tribunal.jobs.pipeline.outputs import OutputDir
    from tribunal.jobs.sample import build_stages

    cfg = load_config(LabelConfig, None, str(ROOT / "configs" / "label_vllm_cluster.yaml"), output="/tmp/tribunal-plan-test")
    stages = build_stages(cfg.sample_config(), OutputDir("/tmp/tribunal-plan-test/trajectories"), pa.array([], pa.string()))
    by_name = {s.name: s for s in stages}
    assert [s.name for s in stages] == ["validate", "rebatch", "generate", "write"]
    gen = by_name["generate"]
    assert gen.num_gpus == 1.0
    compute = gen.kwargs["compute"]
    assert (compute.min_size, compute.max_size) == (8, 8)
    assert compute.max_concurrent_calls_per_actor == 4 and compute.enable_true_multi_threading
    assert gen.kwargs["batch_size"] == 64
    assert gen.kwargs["fn_constructor_kwargs"]["engine_cfg"].kind == "vllm"
    assert by_name["validate"].num_gpus == 0 and by_name["write"].num_gpus == 0
    assert by_name["rebatch"].kwargs == {"target_num_rows_per_block": 64}


def test_build_tiny_model_through_the_cli(tmp_path):
    r = tribunal("build-tiny-model", "--output", str(tmp_path / "m"), "--train-steps", "0")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "m" / "config.json").exists() and (tmp_path / "m" / "tokenizer.json").exists()
