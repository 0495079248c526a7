"""`tribunal train` on the driver: each task's own --help, and the failures it reports in one line
before any process starts (no DeepSpeed, no model, a bad template or config). No torchrun here:
whole runs, their one-line rank failures and their quiet consoles are in test_trainer.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tribunal.schemas.errors import TribunalError

ROOT = Path(__file__).resolve().parents[2]


def tribunal(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def corpus(tmp_path: Path, manifest: dict | None = None) -> str:
    """A one-row SFT corpus, with the ``_manifest.json`` given."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.schemas import arrow

    root = tmp_path / "sft"
    root.mkdir(parents=True, exist_ok=True)
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    row = {"id": "s0", "sample_index": 0, "hinted": False, "permutation": [0], "messages": chat, "prompt": chat[:1], "completion": chat[1:]}
    pq.write_table(pa.Table.from_pylist([row], schema=arrow.SFT), root / "part-00000.parquet")
    (root / "_manifest.json").write_text(json.dumps({"rows": 1, **(manifest or {})}))
    return str(root)


def test_each_task_shows_its_own_options(tmp_path):
    top, sft, metarm = (tribunal("train", *a, cwd=tmp_path) for a in (["--help"], ["sft", "--help"], ["metarm", "--help"]))
    assert top.returncode == sft.returncode == metarm.returncode == 0, (top.stderr, sft.stderr, metarm.stderr)
    assert "{sft,metarm}" in top.stdout and "train the GRM" in top.stdout and "train the meta-RM" in top.stdout
    assert sft.stdout != metarm.stdout
    assert sft.stdout.startswith("usage: tribunal train sft") and metarm.stdout.startswith("usage: tribunal train metarm")
    for only_metarm in ("--holdout", "--pos-weight", "--eval-every"):
        assert only_metarm in metarm.stdout and only_metarm not in sft.stdout, only_metarm
    assert "--template" in sft.stdout and "--template" not in metarm.stdout
    for shown in (sft.stdout, metarm.stdout):
        for common in ("--data", "--model", "--output", "--deepspeed", "--nproc", "--debug"):
            assert common in shown, common
        # the default DeepSpeed config by name, not as a path inside the clone
        assert "(default: zero0)" in " ".join(shown.split()) and str(ROOT) not in shown and "configs/zero0.json" not in shown


@pytest.mark.parametrize("make,expect", [
    (lambda tmp: "/nonexistent/model", "model not found: /nonexistent/model"),
    (lambda tmp: str(tmp), "not a model directory (no config.json): {tmp}"),
])
def test_a_bad_model_is_one_line_before_any_process(tmp_path, make, expect):
    model = make(tmp_path)
    out = tmp_path / "out"
    r = tribunal("train", "sft", "--data", corpus(tmp_path), "--model", model, "--output", str(out))
    assert r.returncode == 2 and r.stderr == f"tribunal train sft: error: {expect.format(tmp=tmp_path)}\n", r.stderr
    assert "Repo id" not in r.stderr and not out.exists()  # nothing launched, nothing written


def test_without_deepspeed_one_line_naming_the_extra(tmp_path, tiny_model):
    code = ("import sys; sys.modules['deepspeed'] = None\n"  # as if it were not installed
            "from tribunal.jobs.cli import main\n"
            f"sys.exit(main(['train', 'metarm', '--data', {str(tmp_path)!r}, '--model', {tiny_model!r}, '--output', {str(tmp_path / 'o')!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr == "tribunal train metarm: error: training needs DeepSpeed: pip install 'tribunal[train]'\n"


def test_bad_template_deepspeed_config_or_other_tasks_option_is_one_line(tmp_path, tiny_model):
    data = corpus(tmp_path)
    common = ("--data", data, "--model", tiny_model, "--output", str(tmp_path / "o"))
    r = tribunal("train", "sft", *common, "--template", "toyy")
    assert r.returncode == 2 and r.stderr.startswith("tribunal train sft: error: template toyy: no such file") and r.stderr.count("\n") == 1
    r = tribunal("train", "sft", *common, "--deepspeed", "zero9")
    assert r.returncode == 2 and "cannot read DeepSpeed config zero9" in r.stderr and "shipped: zero0" in r.stderr
    yaml = tmp_path / "c.yaml"
    yaml.write_text("pos_weight: 2.0\n")  # a YAML may hold any key: the meta-RM's is refused for sft
    r = tribunal("train", "sft", *common, "--config", str(yaml))
    assert r.returncode == 2 and r.stderr == "tribunal train sft: error: --pos-weight is for train metarm, not train sft\n"


def test_the_corpus_template_must_load(tmp_path, tiny_model):
    data = corpus(tmp_path, {"template": "my_template", "config": {"template": "templates/mine.txt"}})
    r = tribunal("train", "sft", "--data", data, "--model", tiny_model, "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "names the template 'templates/mine.txt'" in r.stderr and r.stderr.rstrip().endswith("pass --template")


def test_shipped_deepspeed_configs_by_name():
    from tribunal.training.trainer import CONFIGS, TrainConfig, deepspeed_config

    for path in CONFIGS.glob("*.json"):
        by_name = deepspeed_config(TrainConfig(data="d", model="m", output="o", deepspeed=path.stem), 2)
        assert by_name == deepspeed_config(TrainConfig(data="d", model="m", output="o", deepspeed=str(path)), 2)
    assert deepspeed_config(TrainConfig(data="d", model="m", output="o", deepspeed="zero3"), 2)["zero_optimization"]["stage"] == 3


def test_the_first_failing_rank_is_reported(tmp_path):
    from tribunal.training.launch import first_failure

    assert first_failure(tmp_path, 1) == (f"training failed (torchrun exit 1); no rank reported a cause (log: {tmp_path / 'torchrun.log'})", False)
    reports = [{"rank": 1, "time": 20.0, "message": "RuntimeError: connection closed", "user_error": False, "log": "o/logs/rank1.log"},
               {"rank": 0, "time": 10.0, "message": "o/checkpoints: checkpoint has seed=1, this run has 0: use another --output",
                "user_error": True, "log": "o/logs/rank0.log"}]
    for r in reports:
        (tmp_path / f"error-rank{r['rank']}.json").write_text(json.dumps(r))
    assert first_failure(tmp_path, 2) == ("o/checkpoints: checkpoint has seed=1, this run has 0: use another --output (log: o/logs/rank0.log)", True)


def test_the_light_modules_import_no_heavy_ones():
    code = ("import sys, tribunal.training.launch, tribunal.training.trainer, tribunal.training.model_record; "
            "print(sorted(m for m in ('torch', 'deepspeed', 'transformers', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_check_task_refuses_the_other_tasks_options():
    from tribunal.training.trainer import TrainConfig, check_task

    base = {"data": "d", "model": "m", "output": "o"}
    check_task(TrainConfig(**base, template="toy"), "sft")
    check_task(TrainConfig(**base, holdout=0.1, pos_weight=2.0, eval_every=10), "metarm")
    for cfg, task, match in [(TrainConfig(**base, template="toy"), "metarm", "--template is for train sft"),
                             (TrainConfig(**base, holdout=0.1), "sft", "--holdout is for the meta-RM"),
                             (TrainConfig(**base, eval_every=10), "sft", "--eval-every is for train metarm")]:
        with pytest.raises(TribunalError, match=match):
            check_task(cfg, task)
