"""The engine options are declared once and every engine job has all of them; plans check their columns."""

import dataclasses

import pyarrow as pa
import pytest

from tribunal.jobs.engines import EngineConfig
from tribunal.jobs.pipeline.engine_job import EngineJobConfig
from tribunal.jobs.pipeline.outputs import OutputDir
from tribunal.jobs.pipeline.stages import StagePlan, check_chain
from tribunal.schemas import arrow

ENGINE_JOBS = {
    "sample": ("tribunal.jobs.sample", "SampleConfig"),
    "label": ("tribunal.jobs.label", "LabelConfig"),
    "rft": ("tribunal.jobs.rft", "RftConfig"),
    "score": ("tribunal.jobs.score", "ScoreConfig"),
    "metarm-score": ("tribunal.jobs.metarm_score", "MetaRmScoreConfig"),
}
# EngineConfig's fields and the job option that sets each (kind and task are the job's to choose).
ENGINE_KNOBS = {"kind": "engine", "model": "model", "task": None, "endpoint": None}  # endpoint: the openai options (test_openai_config.py)


def _config(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("job", sorted(ENGINE_JOBS))
def test_every_engine_job_has_every_engine_and_pool_option(job):
    """Each engine job's config inherits the one options block, and its CLI has a flag for every
    engine knob (what drifted before: score and metarm-score lacked tensor parallelism)."""
    from tribunal.jobs.cli import build_parser

    cls = _config(*ENGINE_JOBS[job])
    assert issubclass(cls, EngineJobConfig)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert {f.name for f in dataclasses.fields(EngineJobConfig)} <= fields
    for knob in (f.name for f in dataclasses.fields(EngineConfig)):
        option = ENGINE_KNOBS.get(knob, knob)
        if option is not None:
            assert option in fields, f"{job}: no option for the engine's {knob!r}"
    sub = build_parser()._subparsers._group_actions[0].choices[job]
    flags = {s for a in sub._actions for s in a.option_strings}
    for f in dataclasses.fields(EngineJobConfig):
        assert "--" + f.name.replace("_", "-") in flags, f"{job}: no --{f.name.replace('_', '-')}"


def test_engine_config_carries_every_option(tiny_model):
    from tribunal.jobs.metarm_score import MetaRmScoreConfig
    from tribunal.jobs.score import ScoreConfig

    kw = dict(input="x", output="y", model=tiny_model, engine="vllm", max_num_seqs=7, tensor_parallel_size=2, max_model_len=99,
              gpu_memory_utilization=0.5, enforce_eager=True, dtype="bfloat16")
    for cfg, task in ((ScoreConfig(mode="grm", **kw), "generate"), (MetaRmScoreConfig(**kw), "classify")):
        e = cfg.engine_config()
        assert (e.kind, e.task, e.max_num_seqs, e.tensor_parallel_size, e.max_model_len, e.gpu_memory_utilization, e.enforce_eager,
                e.dtype) == ("vllm", task, 7, 2, 99, 0.5, True, "bfloat16")


def test_label_hands_every_engine_option_to_the_meta_rm(tiny_model):
    from tribunal.jobs.label import LabelConfig

    cfg = LabelConfig(input="x", output="out", model=tiny_model, meta_rm=tiny_model, tensor_parallel_size=2, max_num_seqs=3,
                      concurrent_batches=2, concurrency=3, overwrite=True)
    m = cfg.metarm_config()
    for f in dataclasses.fields(EngineJobConfig):
        if f.name not in ("input", "output", "model"):
            assert getattr(m, f.name) == getattr(cfg, f.name), f.name


def test_a_bad_engine_option_names_its_key():
    from tribunal.jobs.score import ScoreConfig

    with pytest.raises(ValueError, match="'tensor_parallel_size'"):
        ScoreConfig(input="x", output="y", model="m", tensor_parallel_size=0)
    with pytest.raises(ValueError, match="'top_p'"):
        ScoreConfig(input="x", output="y", model="m", mode="grm", top_p=0)


def test_template_defaults_to_what_the_model_records(tiny_model):
    """The committed toy GRM records ``toy`` (its one-response variant ``toy_single``); a model
    without a record gets ``default``; an explicit --template wins."""
    from tribunal.jobs.sample import SampleConfig
    from tribunal.jobs.score import ScoreConfig
    from tribunal.training.toy.recipe import COMMITTED

    toy = str(COMMITTED / "toy-grm")
    assert SampleConfig(input="x", output="y", model=toy).template == "toy"
    assert SampleConfig(input="x", output="y", model=toy, template="default").template == "default"
    assert SampleConfig(input="x", output="y", model=tiny_model).template == "default"
    assert ScoreConfig(input="x", output="y", model=toy, mode="grm", form="pointwise").template == "toy_single"
    assert ScoreConfig(input="x", output="y", model=toy, mode="grm", form="group").template == "toy"


def test_check_chain_names_the_stage_and_the_column():
    plan = [StagePlan("a", None, adds=("x",)), StagePlan("b", None, needs=("x", "y"))]
    with pytest.raises(ValueError, match="stage 'b' needs column 'y'"):
        check_chain(plan, ["id"])
    assert check_chain(plan, ["id", "y"]) == ["id", "y", "x"]


def test_engine_job_plans_fit_together(tiny_model, tmp_path):
    """Each engine job's stage list, as built for a run, passes its own column contracts."""
    from tribunal.jobs import metarm_score, sample, score
    from tribunal.jobs.pipeline.scoring import ROLLOUT_COLUMNS

    empty = pa.array([], pa.string())
    s = sample.SampleConfig(input="x", output=str(tmp_path / "t"), model=tiny_model)
    check_chain(sample.build_stages(s, OutputDir(s.output), empty), ["id", "context", "responses", "labels"])
    for mode in ("prob", "grm"):
        cfg = score.ScoreConfig(input="x", output=str(tmp_path / mode), model=tiny_model, mode=mode)
        check_chain(score.build_stages(cfg, OutputDir(cfg.output)), list(ROLLOUT_COLUMNS))
    from tribunal.jobs.pipeline.stages import STATS

    m = metarm_score.MetaRmScoreConfig(input="x", output=str(tmp_path / "m"), model=tiny_model)
    assert check_chain(metarm_score.build_stages(m, OutputDir(m.output), empty), list(arrow.TRAJECTORY.names)) == STATS.names
    with pytest.raises(ValueError, match="stage 'select' needs column"):  # samples are not trajectories
        check_chain(metarm_score.build_stages(m, OutputDir(m.output), empty), list(arrow.SAMPLE.names))
