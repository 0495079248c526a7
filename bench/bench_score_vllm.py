"""``score --mode prob --engine vllm`` vs vLLM's ``prompt_logprobs`` called directly, one run.

Runs in the vLLM tier's environment (``make setup-vllm``), on the device the installed vLLM
targets (here vLLM's CPU build):

(a) the real job, ``tribunal.jobs.score.run`` with ``engine="vllm"``, on an embedded local Ray it
    starts itself (one engine actor, ``--num-cpus`` CPUs, no GPU). Rollouts/s over the scoring
    phase ("prepared" to "scored": actor start and engine load included), the steady pace from
    the shard times (one shard per block, so the engine load is outside it), and the whole run.
(b) ``vllm.LLM`` in this process with the job's own engine arguments
    (``vllm_engine.engine_args``), the same requests the job builds for the same rollouts
    (``prob.rollout_request`` per rollout, ``prob.debias_request`` once per prompt, token ids and
    the scored span from ``engines.continuation_span``), one ``LLM.generate`` with
    ``SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)``; r and r' from the
    returned prompt logprobs (``prob.mean_prob``). Steady = that call; whole = load + call.

The job runs first and Ray is shut down before (b). Both must agree on r and r' (max |difference|
printed); nothing here asserts on time.

Run::

    .venv-vllm/bin/python bench/bench_score_vllm.py --model /work/wt/.tiny/grm --prompts 64 --per-prompt 8
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from bench_score import make_rollouts


def raw_requests(model: str, rows: list[dict]):
    """(token ids, first, last) per request and, per row, (index of its r request, index of its r'
    request): the requests ``ProbScoreStage`` builds, r' once per prompt."""
    from transformers import AutoTokenizer

    from tribunal.jobs.engines import ScoreRequest, continuation_span
    from tribunal.jobs.rewards import prob

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    reqs, where, prime_at = [], [], {}
    for r in rows:
        key = r["context"][0]["content"]
        prompt = tok.apply_chat_template(r["context"], tokenize=False, add_generation_prompt=True)
        span = prob.find_answer(r["response"])
        ri = len(reqs)
        reqs.append(continuation_span(tok, ScoreRequest(*prob.rollout_request(prompt, r["response"], r["reference"], span))))
        if key not in prime_at:
            reqs.append(continuation_span(tok, ScoreRequest(*prob.debias_request(prompt, r["reference"]))))
            prime_at[key] = len(reqs) - 1
        where.append((ri, prime_at[key]))
    return reqs, where


def run_raw(cfg, rows: list[dict]) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from tribunal.jobs.engines.vllm_engine import engine_args
    from tribunal.jobs.rewards import prob

    reqs, where = raw_requests(cfg.model, rows)
    t0 = time.perf_counter()
    llm = LLM(**engine_args(cfg.engine_config()))
    load_s = time.perf_counter() - t0
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    t1 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids, _, _ in reqs], params, use_tqdm=False)
    call_s = time.perf_counter() - t1
    scores = [prob.mean_prob([float(o.prompt_logprobs[t][ids[t]].logprob) for t in range(first, last)])
              for (ids, first, last), o in zip(reqs, outs)]
    return {"load_s": load_s, "call_s": call_s, "requests": len(reqs), "prompt_tokens": sum(len(ids) for ids, _, _ in reqs),
            "r": [scores[i] for i, _ in where], "r_prime": [scores[j] for _, j in where]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--per-prompt", type=int, default=8)
    p.add_argument("--num-cpus", type=float, default=1.0)
    p.add_argument("--batch-rollouts", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.1,
                   help="share of memory for the KV cache (vLLM's CPU build reads it as a share of RAM: 0.1 here)")
    p.add_argument("--json")
    a = p.parse_args(argv)
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    work = Path(tempfile.mkdtemp(prefix="bench-score-vllm-"))
    rows = make_rollouts(a.prompts, a.per_prompt)
    pq.write_table(pa.Table.from_pylist(rows), work / "rollouts.parquet")

    import ray

    from tribunal.jobs.score import ScoreConfig, run
    from tribunal.schemas import columns as c

    cfg = ScoreConfig(input=str(work / "rollouts.parquet"), output=str(work / "scored"), mode="prob", model=a.model, engine="vllm",
                      num_gpus_per_actor=0, num_cpus_per_actor=a.num_cpus, batch_rollouts=a.batch_rollouts, dtype=a.dtype,
                      gpu_memory_utilization=a.gpu_memory_utilization)
    epoch0 = time.time()
    t0 = time.perf_counter()
    m = run(cfg, stream=sys.stderr)
    job_wall = time.perf_counter() - t0
    ray.shutdown()
    score_s = m["timings_s"]["scored"] - m["timings_s"]["prepared"]
    shards = sorted((f.stat().st_mtime - epoch0, pq.ParquetFile(f).metadata.num_rows) for f in (work / "scored").glob("part-*.parquet"))
    steady_rows = sum(r for _, r in shards[1:])
    steady_s = shards[-1][0] - shards[0][0] if len(shards) > 1 else 0.0
    scored = pq.read_table(work / "scored").to_pylist()

    raw = run_raw(cfg, rows)
    # rows of the job's output to input rows: same prompt text and response, in input order
    by_key: dict = {}
    for idx, r in enumerate(rows):
        by_key.setdefault((r["context"][0]["content"], r["response"]), []).append(idx)
    diff = 0.0
    for r in scored:
        idx = by_key[(r[c.CONTEXT][0]["content"], r[c.RESPONSE])][0]
        diff = max(diff, abs(raw["r"][idx] - r[c.R_RAW]), abs(raw["r_prime"][idx] - r[c.R_PRIME]))
    n = len(rows)
    job_rate, raw_rate = n / score_s, n / raw["call_s"]
    steady = steady_rows / steady_s if steady_s > 0 else None
    print(f"{'run':<52}{'rollouts':>9}{'seconds':>9}{'rollouts/s':>12}")
    print(f"{'score job (vllm), scoring phase (actor + load incl.)':<52}{n:>9}{score_s:>9.2f}{job_rate:>12.1f}")
    if steady:
        print(f"{'score job (vllm), steady (first to last shard)':<52}{steady_rows:>9}{steady_s:>9.2f}{steady:>12.1f}")
    print(f"{'score job (vllm), whole run (Ray start incl.)':<52}{n:>9}{job_wall:>9.2f}{n / job_wall:>12.1f}")
    print(f"{'raw LLM.generate prompt_logprobs (the one call)':<52}{n:>9}{raw['call_s']:>9.2f}{raw_rate:>12.1f}")
    print(f"{'raw LLM, engine load + call':<52}{n:>9}{raw['load_s'] + raw['call_s']:>9.2f}{n / (raw['load_s'] + raw['call_s']):>12.1f}")
    print(f"ratio job/raw: steady {(steady or 0) / raw_rate:.2f}, scoring phase {job_rate / raw_rate:.2f}, whole run vs load + call "
          f"{(n / job_wall) / (n / (raw['load_s'] + raw['call_s'])):.2f}; engine load in the job's actor {m.get('engines', {}).get('load_s')}; "
          f"requests {raw['requests']} = {n} rollouts + {a.prompts} prompts ({raw['prompt_tokens']} prompt tokens); max |r or r' difference| {diff:.2e}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"job_rollouts_per_s": job_rate, "job_steady_rollouts_per_s": steady, "raw_rollouts_per_s": raw_rate,
                                            "raw_load_s": raw["load_s"], "job_wall_s": job_wall, "max_diff": diff, "timings_s": m["timings_s"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main())
