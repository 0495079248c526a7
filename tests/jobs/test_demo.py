"""`tribunal demo`: the committed toy GRM and meta-RM through the real pipeline (sample, meta-RM
score, vote, eval) on held-out samples, on an embedded local Ray. The toy models make this test
about judging, not only plumbing: the GRM's votes beat chance and the meta-RM's scores separate
correct from incorrect trajectories."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from tribunal.jobs.grm import grm_math
from tribunal.training.toy import recipe

pytestmark = pytest.mark.slow


def test_committed_toy_models_are_small_and_complete():
    sizes = {}
    for name in ("toy-grm", "toy-metarm"):
        d = recipe.COMMITTED / name
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (d / f).is_file(), f"{d / f} missing"
        sizes[name] = sum(p.stat().st_size for p in d.iterdir() if p.is_file())
    assert sum(sizes.values()) <= 20 * 2**20, sizes
    meta = json.loads((recipe.COMMITTED / "toy-metarm" / "config.json").read_text())
    assert meta["problem_type"] == "multi_label_classification" and meta["num_labels"] == 1 if "num_labels" in meta else len(meta["id2label"]) == 1


def test_demo_runs_the_pipeline_and_the_toy_grm_judges(tmp_path):
    out = tmp_path / "demo"
    r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", "demo", "--output", str(out), "--samples", "24", "--k", "4"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[eval] Voting@4" in r.stderr and "[eval] MetaRM@4" in r.stderr and "scaling.png" in r.stderr
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert (out / "eval" / "scaling.png").stat().st_size > 1000
    voting = metrics["curves"]["voting"]
    assert sorted(map(int, voting)) == [1, 2, 4] and sorted(map(int, metrics["curves"]["metarm"])) == [1, 2, 4]
    v4 = voting["4"] if "4" in voting else voting[4]
    # Chance is about 0.37 over this mix of 2, 3 and 4 responses; the toy GRM is far above it.
    assert v4["accuracy_strict"] > 0.6, v4
    assert v4["parse_failure_rate"] < 0.2, v4
    # The meta-RM's scores separate the GRM's correct trajectories from its incorrect ones.
    scored = pq.read_table(out / "label" / "scored").to_pylist()
    correct = [bool(t["correct"]) for t in scored]
    if 0 < sum(correct) < len(correct):
        assert grm_math.roc_auc([t["meta_score"] for t in scored], correct) > 0.6
