"""sample, label and rft with --engine vllm on a real local Ray (the vLLM tier): counts reconcile,
the permutation grouping is what reaches the engine and its prefix cache shows the sharing, the
same seed gives the same trajectories, and a SIGKILLed run resumes. Every job run starts an
engine (~1 min on CPU), so these are few and small.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import pyarrow.parquet as pq
import pytest

from conftest import ROOT, make_rows, vllm_options, write_samples
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

N = 8  # samples
K = 4  # trajectories per sample; n=2 responses: 2 distinct orders, so 2 requests of n=2 per sample


def _opts(device: str) -> dict:
    return {
        "engine": "vllm",
        "k": K,
        "seed": 3,
        "max_tokens": 32,
        "batch_size": 4,
        "dtype": "float32",  # a rerun reproduces texts exactly, prefix cache or not
        "num_gpus_per_actor": 0 if device == "cpu" else 1,
        "num_cpus_per_actor": 1.0,
        **vllm_options(device),
    }


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    return write_samples(tmp_path_factory.mktemp("vllm_jobs") / "samples.parquet", make_rows(N))


def _traj(d) -> list[dict]:
    rows = pq.read_table(d).to_pylist()
    return sorted(rows, key=lambda r: (r[c.ID], r[c.HINTED], r[c.SAMPLE_INDEX]))


@pytest.fixture(scope="module")
def sampled(vllm_device, ray_local, tiny_model, samples, tmp_path_factory):
    """One sample run on vLLM, shared by the tests below (each run starts an engine)."""
    from tribunal.jobs.sample import SampleConfig, run

    out = tmp_path_factory.mktemp("vllm_sample") / "o"
    return out, run(SampleConfig(input=str(samples), output=str(out), model=tiny_model, **_opts(vllm_device)))


def test_sample_on_vllm_groups_permutations_and_hits_the_prefix_cache(sampled):
    out, manifest = sampled
    rows = _traj(out)
    assert pq.read_schema(next(out.glob("part-*.parquet"))).equals(arrow.TRAJECTORY)  # no engine columns leak
    assert len(rows) == N * K and manifest["counts"]["reconciled"] and manifest["counts"]["samples_out"] == N
    # one request per distinct order of a sample, n = how many trajectories share it
    orders = Counter((r[c.ID], tuple(r[c.PERMUTATION])) for r in rows)
    assert len(orders) < len(rows) and sorted(set(orders.values())) != [1]
    prompt = {(r[c.ID], tuple(r[c.PERMUTATION])): r[c.PROMPT_TOKENS] for r in rows}
    eng = manifest["engines"]
    assert eng["request_prompt_tokens"] == sum(prompt.values()) < sum(r[c.PROMPT_TOKENS] for r in rows)
    # the two orders of a sample share the template preamble: vLLM's own counter shows cache hits
    assert 0 < eng["cached_prompt_tokens"] < eng["request_prompt_tokens"]
    assert len(eng["load_s"]) == 1 and eng["load_s"][0] > 1 and 0 < eng["generation_s"]


def test_label_on_vllm_gives_the_same_trajectories_for_the_same_seed(sampled, vllm_device, ray_local, tiny_model, samples, tmp_path):
    """label = sample + vote; its trajectories equal the sample run's with the same seed (another
    engine, other batches: batch_size differs)."""
    from tribunal.jobs.label import LabelConfig, run as label

    m = label(LabelConfig(input=str(samples), output=str(tmp_path / "l"), model=tiny_model, **{**_opts(vllm_device), "batch_size": 3}))
    a, b = _traj(sampled[0]), _traj(tmp_path / "l" / "trajectories")
    assert [r[c.TEXT] for r in a] == [r[c.TEXT] for r in b] and len(a) == N * K
    votes = pq.read_table(tmp_path / "l" / "votes")
    assert votes.num_rows == N
    assert json.dumps(m)  # the label manifest is plain JSON


def test_rft_on_vllm(vllm_device, ray_local, tiny_model, samples, tmp_path):
    from tribunal.jobs.rft import RftConfig, run

    m = run(RftConfig(input=str(samples), output=str(tmp_path / "r"), model=tiny_model, hint="always", **{**_opts(vllm_device), "k": 2}))
    rows = _traj(tmp_path / "r" / "trajectories")
    assert sum(r[c.HINTED] for r in rows) == N and len(rows) == N * 3  # k=2 plus one hinted each
    assert json.dumps(m)


def test_metarm_score_on_vllm_pooling_matches_transformers(vllm_device, ray_local, tiny_classifier, tmp_path):
    """metarm-score with --engine vllm (vLLM's pooling runner, `classify`) on a meta-RM checkpoint
    laid out as `tribunal train metarm` exports it (one logit, problem_type
    multi_label_classification: vLLM applies the sigmoid) gives the transformers engine's scores."""
    import shutil

    sys.path.insert(0, str(ROOT / "tests" / "jobs"))
    from test_metarm_score import trajectories, write_traj  # the main tier's trajectory builder

    from tribunal.jobs import metarm_score

    model = tmp_path / "metarm"
    shutil.copytree(tiny_classifier, model)
    config = json.loads((model / "config.json").read_text())
    config["problem_type"] = "multi_label_classification"  # as the meta-RM trainer writes it
    (model / "config.json").write_text(json.dumps(config))
    src = write_traj(tmp_path / "traj", trajectories(4, 2), per_file=4)
    scores = {}
    for engine in ("transformers", "vllm"):
        opts = {"engine": "vllm", "num_gpus_per_actor": 0 if vllm_device == "cpu" else 1, "dtype": "float32", **vllm_options(vllm_device)} \
            if engine == "vllm" else {"engine": "transformers", "device": vllm_device, "dtype": "float32"}
        m = metarm_score.run(metarm_score.MetaRmScoreConfig(input=str(src), output=str(tmp_path / engine), model=str(model), batch_size=4,
                                                            num_cpus_per_actor=0.5, **opts))  # reads and writes need the rest
        assert m["counts"]["reconciled"] and m["counts"]["rows_out"] == 8
        scores[engine] = {(r[c.ID], r[c.SAMPLE_INDEX]): r[c.META_SCORE] for r in pq.read_table(tmp_path / engine).to_pylist()}
    assert scores["vllm"].keys() == scores["transformers"].keys()
    hf = scores["transformers"]
    assert max(abs(scores["vllm"][k] - hf[k]) for k in hf) < 1e-3
    assert 0 < min(hf.values()) < max(hf.values()) < 1  # probabilities, spread by the head
