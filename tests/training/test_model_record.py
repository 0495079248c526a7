"""A model carries its template: ``tribunal_model.json`` as the trainer, the toy recipe and the tiny
model write it, and as ``jobs.grm.protocol.model_templates`` reads it back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tribunal.jobs.grm.protocol import load_template, model_templates
from tribunal.schemas.errors import TribunalError
from tribunal.training.model_record import MANIFEST_NAME, TEMPLATE_FILE, export_record, sft_template, template_keys, write_record
from tribunal.training.trainer import TrainConfig


def test_template_keys_name_the_single_response_variant():
    assert template_keys("default") == {"template": "default", "template_single": "default"}
    assert template_keys("toy") == {"template": "toy", "template_single": "toy_single"}
    assert template_keys("single") == {"template": "single", "template_single": "single"}
    assert template_keys("rm_r1_pairwise") == {"template": "rm_r1_pairwise"}  # two responses only
    with pytest.raises(TribunalError, match="template nope"):
        template_keys("nope")


def _dir(path: Path, manifest: dict | None = None, record: dict | None = None) -> str:
    path.mkdir(parents=True, exist_ok=True)
    if manifest is not None:
        (path / "_manifest.json").write_text(json.dumps(manifest))
    if record is not None:
        (path / MANIFEST_NAME).write_text(json.dumps(record))
    return str(path)


def test_the_sft_template_comes_from_the_flag_the_corpus_the_base_model_or_default(tmp_path):
    bare = _dir(tmp_path / "bare")
    toy_model = _dir(tmp_path / "toy_model", record={"template": "toy", "template_single": "toy_single"})
    # rft / rft-filter: config.template as the user gave it (None when read from _run.json), template as resolved
    rft = _dir(tmp_path / "rft", {"rows": 1, "template": "toy", "config": {"template": None}})
    given = _dir(tmp_path / "given", {"rows": 1, "template": "toy", "config": {"template": "toy"}})
    plain = _dir(tmp_path / "plain", {"rows": 1})
    assert sft_template(rft, None, bare) == sft_template(given, None, bare) == "toy"
    assert sft_template(plain, "rm_r1_pairwise", toy_model) == "rm_r1_pairwise"  # the flag wins
    assert sft_template(plain, None, toy_model) == "toy"  # the base model's record
    assert sft_template(plain, None, bare) == sft_template(str(tmp_path / "nowhere"), None, bare) == "default"
    cfg = TrainConfig(data=rft, model=bare, output="o")
    assert export_record(cfg, "sft") == {"kind": "grm", "trained_by": "tribunal train sft", "base_model": bare,
                                         "template": "toy", "template_single": "toy_single"}
    assert export_record(cfg, "metarm") == {"kind": "meta-rm", "trained_by": "tribunal train metarm", "base_model": bare}


def test_a_template_file_travels_with_the_model(tmp_path):
    source = tmp_path / "mine.txt"
    source.write_text(load_template("default").body)
    model = tmp_path / "model"
    write_record(model, {"kind": "grm", **template_keys(str(source))})
    record = json.loads((model / MANIFEST_NAME).read_text())
    assert record["template"] == record["template_single"] == TEMPLATE_FILE
    assert (model / TEMPLATE_FILE).read_text() == source.read_text()
    source.unlink()  # the model no longer needs the original
    found = model_templates(str(model))
    assert found == {"template": str(model / TEMPLATE_FILE), "template_single": str(model / TEMPLATE_FILE)}
    assert load_template(found["template"]).body == load_template("default").body
    # trained again from it: the template comes from the base model's record, and is carried on
    again = tmp_path / "again"
    write_record(again, export_record(TrainConfig(data=str(tmp_path / "nowhere"), model=str(model), output="o"), "sft"))
    assert json.loads((again / MANIFEST_NAME).read_text())["template"] == TEMPLATE_FILE and (again / TEMPLATE_FILE).exists()


def test_the_toy_recipe_export_records_the_templates(tmp_path, tiny_model):
    from tribunal.training.toy import recipe

    recipe._export_bf16(Path(tiny_model), tmp_path / "toy-grm", classifier=False)
    assert model_templates(str(tmp_path / "toy-grm")) == {"template": "toy", "template_single": "toy_single"}
    assert json.loads((tmp_path / "toy-grm" / MANIFEST_NAME).read_text())["kind"] == "grm"
