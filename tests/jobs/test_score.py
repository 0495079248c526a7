"""score --mode prob end to end on a real local Ray with the tiny model, cross-checked against a
plain transformers forward pass; a tokenizer that merges across the answer boundary; grm mode."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.jobs.rewards import prob
from tribunal.jobs.score import ScoreConfig, run
from tribunal.schemas import columns as c

QUESTIONS = [("What is 2 + 2?", "4"), ("Name the capital of France.", "Paris"), ("What is 7 * 6?", "42")]


def rollout_rows() -> list[dict]:
    rows = []
    for qi, (q, ref) in enumerate(QUESTIONS):
        ctx = [{"role": "user", "content": q}]
        for j, (think, ans) in enumerate([("easy", ref), ("let me see, maybe", "five"), ("hmm", ref + "!")]):
            rows.append({"context": ctx, "response": f"<think>{think}</think>\n<answer>{ans}</answer>", "answer": ref, "data_source": "toy"})
        rows.append({"context": ctx, "response": "I think it is " + ref, "answer": ref, "data_source": "toy"})  # no answer section
    rows.append({"context": [{"role": "user", "content": "Empty?"}], "response": "", "answer": "x", "data_source": "toy"})
    rows.append({"context": [{"role": "user", "content": "No ref?"}], "response": "<answer>1</answer>", "answer": None, "data_source": "toy"})
    return rows


def plain_mean_prob(model_dir: str, prefix: str, cont: str, suffix: str) -> float:
    """r computed the obvious way: one forward pass, softmax, the tokens overlapping ``cont``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    enc = tok(prefix + cont + suffix, add_special_tokens=False, return_offsets_mapping=True)
    lo, hi = len(prefix), len(prefix) + len(cont)
    picked = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < hi and e > lo]
    with torch.no_grad():
        probs = torch.softmax(model(torch.tensor([enc["input_ids"]])).logits[0].double(), dim=-1)
    return sum(probs[i - 1, enc["input_ids"][i]].item() for i in picked) / len(picked)


def test_score_prob_end_to_end_and_cross_check(tiny_model, ray_local, tmp_path):
    from transformers import AutoTokenizer

    src = tmp_path / "rollouts"
    src.mkdir()
    rows = rollout_rows()
    pq.write_table(pa.Table.from_pylist(rows[:7]), src / "a.parquet")  # a prompt's rollouts span two files
    pq.write_table(pa.Table.from_pylist(rows[7:]), src / "b.parquet")
    out = tmp_path / "scored"
    cfg = ScoreConfig(input=str(src), output=str(out), mode="prob", model=tiny_model, reference_column="answer",
                      batch_rollouts=4, num_cpus_per_actor=0.5)
    m = run(cfg)
    counts = m["counts"]
    assert counts["reconciled"] and counts["rows_in"] == 14 and counts["quarantined"] == 2 and counts["rollouts_scored"] == 12
    assert counts["quarantine_reasons"] == {"empty_response": 1, "no_reference": 1}
    assert counts["reward_reasons"] == {"no_answer": 3}

    scored = pq.read_table(out).to_pylist()
    tok = AutoTokenizer.from_pretrained(tiny_model)
    by_prompt: dict[str, list[dict]] = {}
    for r in scored:
        by_prompt.setdefault(r[c.PROMPT_ID], []).append(r)
    assert len(by_prompt) == 3
    checked = 0
    for pid, group in by_prompt.items():
        primes = {r[c.R_PRIME] for r in group if r[c.R_PRIME] is not None}
        assert len(primes) == 1  # r' once per prompt
        for r in group:
            if r[c.REWARD_REASON] == "no_answer":
                assert r[c.REWARD] == 0.0 and r[c.R_RAW] is None and not r[c.FORMAT_OK]
                continue
            assert r[c.FORMAT_OK]
            assert r[c.REWARD] == pytest.approx(min(max(r[c.R_RAW] - r[c.R_PRIME], 0.0), 1.0), abs=1e-12)
            prompt = tok.apply_chat_template(r[c.CONTEXT], tokenize=False, add_generation_prompt=True)
            span = prob.find_answer(r[c.RESPONSE])
            want_r = plain_mean_prob(tiny_model, *prob.rollout_request(prompt, r[c.RESPONSE], r[c.REFERENCE], span))
            want_rp = plain_mean_prob(tiny_model, *prob.debias_request(prompt, r[c.REFERENCE]))
            assert r[c.R_RAW] == pytest.approx(want_r, abs=1e-5)
            assert r[c.R_PRIME] == pytest.approx(want_rp, abs=1e-5)
            checked += 1
    assert checked == 9
    # the generated answer ("five") does not change r: the reference replaces it
    g = sorted(by_prompt[scored[0][c.PROMPT_ID]], key=lambda r: r[c.ROLLOUT_INDEX])
    assert g[0][c.R_RAW] != g[1][c.R_RAW]  # but the reasoning before it does

    # resume: a lost shard is redone, the rest is skipped; same numbers
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) >= 2
    shards[0].unlink()
    m2 = run(cfg)
    assert 0 < m2["this_run"]["rollouts"] < 12 and m2["counts"]["reconciled"]
    again = {(r[c.PROMPT_ID], r[c.ROLLOUT_INDEX]): r[c.REWARD] for r in pq.read_table(out).to_pylist()}
    assert again == {(r[c.PROMPT_ID], r[c.ROLLOUT_INDEX]): r[c.REWARD] for r in scored}
    # the format mix
    assert run(ScoreConfig(**{**cfg.__dict__, "output": str(tmp_path / "mixed"), "format_weight": 0.1}))["counts"]["reconciled"]
    mix = {(r[c.PROMPT_ID], r[c.ROLLOUT_INDEX]): r[c.REWARD] for r in pq.read_table(tmp_path / "mixed").to_pylist()}
    for r in scored:
        want = 0.0 if r[c.REWARD_REASON] else 0.9 * r[c.REWARD] + 0.1
        assert mix[(r[c.PROMPT_ID], r[c.ROLLOUT_INDEX])] == pytest.approx(want, abs=1e-12)
    assert json.loads((out / "_manifest.json").read_text())["counts"]["reconciled"]


def merging_model(tiny_model: str, dest: Path) -> str:
    """The tiny model with a tokenizer that has no pre-tokenizer split, trained so that BPE
    merges join '>' with the answer's first characters (tokens like '>4' and '>Par')."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tribunal.training import tiny_model as tm

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["<answer>42</answer>", "<answer>4</answer>", "<answer>Paris</answer>"] * 200 + ["What is 2 + 2? The capital of France."] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, min_frequency=2, special_tokens=tm.SPECIAL_TOKENS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=tm.BOS_TOKEN, eos_token=tm.EOS_TOKEN, pad_token=tm.PAD_TOKEN,
                                   additional_special_tokens=[tm.IM_START], clean_up_tokenization_spaces=False)
    fast.chat_template = tm.CHAT_TEMPLATE
    shutil.copytree(tiny_model, dest)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (dest / f).unlink(missing_ok=True)
    fast.save_pretrained(dest)
    return str(dest)


def test_prob_tokens_merged_across_the_boundary(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    from tribunal.jobs.engines import EngineConfig, ScoreRequest, build_engine, continuation_span

    model = merging_model(tiny_model, tmp_path / "merging")
    tok = AutoTokenizer.from_pretrained(model)
    prefix, ref, suffix = "What is 7 * 6?<think>x</think><answer>", "42", "</answer>"
    ids, first, last = continuation_span(tok, ScoreRequest(prefix, ref, suffix))
    offsets = tok(prefix + ref + suffix, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    # the first scored token starts inside "<answer>": merged across the boundary, scored whole
    assert offsets[first][0] < len(prefix) < offsets[first][1], [tok.decode([i]) for i in ids[first:last]]
    assert first > 0 and "42" in tok.decode(ids[first:last])
    engine = build_engine(EngineConfig(model=model, task="generate", device="cpu"))
    res = engine.score_continuation([ScoreRequest(prefix, ref, suffix)])[0]
    assert list(res.token_ids) == ids[first:last]
    assert prob.mean_prob(res.logprobs) == pytest.approx(plain_mean_prob(model, prefix, ref, suffix), abs=1e-5)
    assert not math.isnan(prob.mean_prob(res.logprobs))


@pytest.mark.parametrize("form", ["pointwise", "group"])
def test_score_grm(tiny_model, ray_local, tmp_path, form):
    from tribunal.jobs.engines import EngineConfig, GenerationRequest, SamplingConfig, build_engine
    from tribunal.jobs.grm import grm_math
    from tribunal.jobs.grm import trajectories as tr
    from tribunal.jobs.grm.protocol import load_template, parse_output

    rows = [r for r in rollout_rows()[:8]]  # two prompts, four rollouts each
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "r.parquet")
    cfg = ScoreConfig(input=str(tmp_path / "r.parquet"), output=str(tmp_path / "o"), mode="grm", form=form, model=tiny_model,
                      k=2, max_n=3, max_tokens=64, temperature=1.0, seed=3, batch_rollouts=4, num_cpus_per_actor=0.5)
    m = run(cfg)
    assert m["counts"]["reconciled"] and m["counts"]["rollouts_scored"] == 8
    scored = pq.read_table(tmp_path / "o").to_pylist()
    assert any(r[c.VALID_SCORES] for r in scored)  # the tiny GRM writes parseable scores
    for r in scored:
        assert 0 <= r[c.VALID_SCORES] <= 2
        if r[c.VALID_SCORES]:
            assert 1 <= r[c.REWARD] <= 10 and r[c.REWARD_REASON] is None
        else:
            assert r[c.REWARD] is None and r[c.REWARD_REASON] in ("no_scores", "wrong_count", "not_integer", "out_of_range", "truncated")

    # recompute the first prompt's rewards with the engine called directly, the GRM protocol by hand
    engine = build_engine(EngineConfig(model=tiny_model, task="generate", device="cpu"))
    template = load_template("default")
    pid = sorted({r[c.PROMPT_ID] for r in scored})[0]
    group = sorted((r for r in scored if r[c.PROMPT_ID] == pid), key=lambda r: r[c.ROLLOUT_INDEX])
    chunks = [[r] for r in group] if form == "pointwise" else [group[:3], group[3:]]
    for j, chunk in enumerate(chunks):
        sid = f"{pid}/{chunk[0][c.ROLLOUT_INDEX]}" if form == "pointwise" else f"{pid}/chunk{j}"
        sample = {c.ID: sid, c.CONTEXT: chunk[0][c.CONTEXT], c.RESPONSES: [r[c.RESPONSE] for r in chunk]}
        totals, valid = [0] * len(chunk), 0
        for spec_group in tr.group_specs(tr.plan_trajectories(sid, len(chunk), 2, 3)):
            req = GenerationRequest(engine.render_chat(tr.messages_for(template, sample, spec_group[0])), len(spec_group), tr.request_seed(3, sid, spec_group[0]))
            res = engine.generate([req], SamplingConfig(temperature=1.0, max_tokens=64))[0]
            for spec, gen in zip(spec_group, res.generations):
                p = parse_output(gen.text, len(chunk), template, truncated=gen.finish_reason == "length")
                if p.ok:
                    valid += 1
                    totals = [a + b for a, b in zip(totals, grm_math.to_original_order(p.scores, spec.permutation))]
        for r, t in zip(chunk, totals):
            assert r[c.VALID_SCORES] == valid
            assert r[c.REWARD] == (pytest.approx(t / valid) if valid else None)


def many_rollouts(prompts: int) -> list[dict]:
    return [{"context": [{"role": "user", "content": f"What is {i} + {i}?"}], "response": f"<think>double {i}</think><answer>{2 * i + j}</answer>",
             "reference": str(2 * i)} for i in range(prompts) for j in range(4)]


def test_score_on_s3(tiny_model, ray_local, s3_server, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server}, key="testing", secret="testing")
    fs.mkdir("score-test")
    pq.write_table(pa.Table.from_pylist(many_rollouts(3) + [{"context": [{"role": "user", "content": "q"}], "response": "", "reference": "x"}]),
                   tmp_path / "r.parquet")
    fs.put(str(tmp_path / "r.parquet"), "score-test/in/r.parquet")
    m = run(ScoreConfig(input="s3://score-test/in", output="s3://score-test/out", mode="prob", model=tiny_model, batch_rollouts=4, num_cpus_per_actor=0.5))
    assert m["counts"]["reconciled"] and m["counts"]["rollouts_scored"] == 12 and m["output"] == "s3://score-test/out"
    fs.invalidate_cache()
    parts = fs.glob("score-test/out/part-*.parquet")
    t = pa.concat_tables([pq.read_table(fs.open(p, "rb")) for p in parts])
    assert t.num_rows == 12 and t.column(c.REWARD).null_count == 0
    assert fs.glob("score-test/out/_quarantine/part-*.parquet")
    m2 = run(ScoreConfig(input="s3://score-test/in", output="s3://score-test/out", mode="prob", model=tiny_model, batch_rollouts=4, num_cpus_per_actor=0.5))
    assert m2["this_run"]["rollouts"] == 0 and m2["counts"]["reconciled"]


@pytest.mark.slow
def test_score_sigkill_resume(tiny_model, tmp_path):
    """Kill the driver with SIGKILL mid-run; the same command completes the output exactly once."""
    import subprocess
    import sys

    from conftest import ROOT
    from test_sample_job import run_then_kill

    n = 60
    pq.write_table(pa.Table.from_pylist(many_rollouts(n)), tmp_path / "r.parquet")
    out = tmp_path / "scored"
    cmd = [sys.executable, "-m", "tribunal.jobs.score", "--input", str(tmp_path / "r.parquet"), "--output", str(out), "--mode", "prob",
           "--model", tiny_model, "--batch-rollouts", "4", "--num-cpus-per-actor", "0.5"]
    env = run_then_kill(cmd, out)
    survivors = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    done_before = sum(pq.ParquetFile(p).metadata.num_rows for p in out.glob("part-*.parquet"))
    assert 0 < done_before < 4 * n
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    t = pq.read_table(out)
    keys = list(zip(t[c.PROMPT_ID].to_pylist(), t[c.ROLLOUT_INDEX].to_pylist()))
    assert len(keys) == len(set(keys)) == 4 * n
    for name, mtime in survivors.items():  # work finished before the kill was kept, not redone
        assert (out / name).stat().st_mtime_ns == mtime
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["this_run"]["rollouts"] == 4 * n - done_before and manifest["counts"]["reconciled"]
    assert not list(out.rglob(".tmp-*"))
