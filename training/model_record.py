"""What a model directory says about itself: ``tribunal_model.json``, and the driver's model check.

A model tribunal trained or built (``tribunal train``'s export ``OUT/model/``, the tiny GRM, the
toy GRM and meta-RM) carries a ``tribunal_model.json``. Its keys:

- ``kind``: ``grm`` (a causal LM that writes judgments) or ``meta-rm`` (a one-logit classifier);
- ``template``: the multi-response GRM prompt template the model was trained on (a built-in name
  such as ``toy``, or ``tribunal_template.txt``: a template file copied into the directory);
- ``template_single``: the template its one-response scoring uses (``toy`` -> ``toy_single``; the
  built-in ``default`` scores one response itself, so a ``default`` model records ``default``);
  absent when the template has no such variant (``rm_r1_pairwise``);
- what built it (``trained_by``, ``base_model``, or the builder's own keys).

The meta-RM records no template. Jobs read the two template keys back with
``tribunal.jobs.grm.protocol.model_templates(model_dir)``.

Light: stdlib and the text protocol only (it runs on the driver, before any process starts).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tribunal.jobs.grm.protocol import MODEL_RECORD
from tribunal.schemas.errors import TribunalError

MANIFEST_NAME = MODEL_RECORD  # "tribunal_model.json": one name, where the protocol reads it back
TEMPLATE_FILE = "tribunal_template.txt"  # a template file travels inside the model directory
DEFAULT_TEMPLATE = "default"


def check_model_dir(model: str) -> None:
    """The base model is a local Hugging Face directory (config.json and a tokenizer), or the name
    of one in the local Hugging Face cache; else one line: ``model not found: PATH``. Checked on the
    driver, so a bad ``--model`` fails before torchrun starts."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "config.json")):
            raise TribunalError(f"not a model directory (no config.json): {model}")
        if not any(os.path.isfile(os.path.join(model, f)) for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
            raise TribunalError(f"model directory has no tokenizer: {model}")
        return
    if os.path.exists(model):
        raise TribunalError(f"not a model directory: {model}")
    if _in_hf_cache(model):  # the trainer loads with local_files_only: a cached hub name works offline
        return
    raise TribunalError(f"model not found: {model}")


def _in_hf_cache(name: str) -> bool:
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "://" in name:
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # noqa: BLE001 - an invalid repo id is simply not in the cache
        return False


def template_keys(name_or_path: str) -> dict[str, str]:
    """``template`` and (when there is one) ``template_single`` for a GRM trained on the template
    ``name_or_path`` (a built-in name or a file): the built-in ``<name>_single`` when it exists,
    else the template itself when it takes one response, else none. Raises the template's own
    one-line error when it cannot be loaded."""
    from tribunal.jobs.grm.protocol import BUILTIN_TEMPLATES, load_template

    template = load_template(name_or_path)
    keys = {"template": name_or_path}
    if name_or_path in BUILTIN_TEMPLATES and f"{name_or_path}_single" in BUILTIN_TEMPLATES:
        keys["template_single"] = f"{name_or_path}_single"
    elif template.min_responses <= 1:
        keys["template_single"] = name_or_path
    return keys


def sft_template(data: str, explicit: str | None, base_model: str) -> str:
    """The template an SFT run trains on: ``--template``, else the corpus's ``_manifest.json``
    (what ``rft``/``rft-filter`` record), else the base model's own record, else ``default``.
    A template named there that cannot be loaded is one line saying to pass ``--template``."""
    if explicit:
        return explicit
    from tribunal.jobs.grm.protocol import load_template, model_templates
    from tribunal.training.data import corpus_template

    declared = corpus_template(data)
    if declared:
        try:
            load_template(declared)
        except TribunalError as e:
            raise TribunalError(f"{data}: its _manifest.json names the template {declared!r}, which does not load here ({e}): "
                                "pass --template") from None
        return declared
    return model_templates(base_model).get("template") or DEFAULT_TEMPLATE


def export_record(cfg: Any, task: str) -> dict[str, Any]:
    """The ``tribunal_model.json`` of a ``tribunal train TASK`` export (checked on the driver too)."""
    record: dict[str, Any] = {"kind": "grm" if task == "sft" else "meta-rm", "trained_by": f"tribunal train {task}",
                              "base_model": cfg.model}
    if task == "sft":
        record.update(template_keys(sft_template(cfg.data, cfg.template, cfg.model)))
    return record


def write_record(model_dir: str | os.PathLike[str], record: dict[str, Any]) -> Path:
    """Write ``record`` as ``MODEL_DIR/tribunal_model.json``; a template given as a file is copied
    into the directory (``tribunal_template.txt``) and recorded by that name, so the model carries it."""
    from tribunal.jobs.grm.protocol import BUILTIN_TEMPLATES

    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(record)
    source = record.get("template")
    if isinstance(source, str) and source not in BUILTIN_TEMPLATES and os.path.isfile(source):
        if Path(source).resolve() != (out / TEMPLATE_FILE).resolve():
            shutil.copyfile(source, out / TEMPLATE_FILE)
        for key in ("template", "template_single"):
            if record.get(key) == source:
                record[key] = TEMPLATE_FILE
    path = out / MANIFEST_NAME
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
