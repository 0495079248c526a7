"""``sample --engine openai`` against a bare async client sending the same requests to the same
vLLM OpenAI server, in one run; then the job's throughput as a function of in-flight requests.

Runs in the vLLM tier's environment (``make setup-vllm``): it starts vLLM's OpenAI server on a
free loopback port (the tests' ``VLLMServer``: float32, eager, prefix caching on) serving
``--model``, and an embedded local Ray for the job.

(a) the job: ``tribunal.jobs.sample.run`` with ``engine="openai"``, one engine actor (no GPU),
    ``--max-in-flight`` requests at the endpoint. Trajectories/s over the generation phase less
    the actor's start-up (``engines.generation_s`` of the manifest: Ray Data's scheduling, the
    stages and the commits included); also printed: the pace between the first and the last
    committed shard, and the whole phase.
    A job also pays fixed costs that do not grow with the data (Ray Data's planning, a worker
    process per task, the commits): the job runs at ``--samples`` and at three times that, and
    the *marginal* rate, (extra trajectories) / (extra seconds), is its pace once it runs.
(b) the bare client: ``httpx.AsyncClient`` in this process, the requests the job sends (the
    prompt rendered with the model's chat template and tokenized as the engine does, ``n`` per
    distinct response order, the same seeds, temperature and max_tokens), at most the same number
    in flight. Trajectories/s = generations / wall time of all requests.
(c) the engine alone: ``OpenAIEngine.generate`` in this process (no Ray) on the same requests.

Each measured run gets its own samples (same sizes, other questions) so that no run finds its
prompts in the server's prefix cache from an earlier one; a warm-up run of the bare client comes
first. The ratios (a) marginal / (b) and (c) / (b) are printed (goal: >= 0.95), then (a) for each
in-flight count of ``--sweep``. Nothing here asserts on time.

Run::

    .venv-vllm/bin/python bench/bench_openai.py --samples 24 --k 4 --batch-size 6 --max-tokens 160 --sweep 1,4,16,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def samples(count: int, seed: int) -> list[dict]:
    from tribunal.jobs.demo import demo_rows

    return [{**r, "id": f"b{seed}-{r['id']}"} for r in demo_rows(count, seed=seed)[:count]]


def job_requests(model: str, template_name: str, rows: list[dict], k: int, seed: int) -> list[tuple[list[int], int, int, str]]:
    """(prompt token ids, n, seed, prompt text) per request, as ``GenerateStage`` builds them."""
    from transformers import AutoTokenizer

    from tribunal.jobs.grm import trajectories as tr
    from tribunal.jobs.grm.protocol import load_template

    tok = AutoTokenizer.from_pretrained(model, local_files_only=True)
    template = load_template(template_name)
    out = []
    for s in rows:
        for group in tr.group_specs(tr.plan_trajectories(s["id"], len(s["responses"]), k, seed)):
            prompt = tok.apply_chat_template(tr.messages_for(template, s, group[0]), tokenize=False, add_generation_prompt=True)
            out.append((tok(prompt, add_special_tokens=False)["input_ids"], len(group), tr.request_seed(seed, s["id"], group[0]), prompt))
    return out


async def bare(base_url: str, served: str, reqs, in_flight: int, temperature: float, max_tokens: int) -> tuple[float, int]:
    """(seconds, generations) for all requests through one AsyncClient, ``in_flight`` at a time."""
    import httpx

    sem = asyncio.Semaphore(in_flight)
    limits = httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def one(ids, n, seed, _prompt):
            body = {"model": served, "prompt": ids, "n": n, "seed": seed, "temperature": temperature, "max_tokens": max_tokens,
                    "return_token_ids": True}
            async with sem:
                r = await client.post(base_url + "/completions", json=body)
            r.raise_for_status()
            return len(r.json()["choices"])

        t0 = time.perf_counter()
        got = await asyncio.gather(*(one(*q) for q in reqs))
        return time.perf_counter() - t0, sum(got)


def run_engine(args, base_url: str, reqs, in_flight: int) -> tuple[float, int]:
    """(seconds, generations): the same requests through ``OpenAIEngine.generate``, no Ray."""
    from tribunal.jobs.engines import EngineConfig, GenerationRequest, SamplingConfig
    from tribunal.jobs.engines.openai_engine import EndpointConfig, OpenAIEngine

    eng = OpenAIEngine(EngineConfig(kind="openai", model=args.model, endpoint=EndpointConfig(base_url=base_url, max_in_flight=in_flight)))
    try:
        gen = [GenerationRequest(prompt, n, seed) for _ids, n, seed, prompt in reqs]
        t0 = time.perf_counter()
        out = eng.generate(gen, SamplingConfig(temperature=args.temperature, max_tokens=args.max_tokens))
        return time.perf_counter() - t0, sum(len(r.generations) for r in out)
    finally:
        eng.close()


def run_job(args, base_url: str, rows: list[dict], in_flight: int, work: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.jobs.sample import SampleConfig, run

    src = work / f"in-{in_flight}-{rows[0]['id']}.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    cfg = SampleConfig(input=str(src), output=str(work / f"out-{in_flight}-{rows[0]['id']}"), model=args.model, engine="openai",
                       base_url=base_url, template=args.template, k=args.k, seed=0, temperature=args.temperature,
                       max_tokens=args.max_tokens, batch_size=args.batch_size, max_in_flight=in_flight, num_cpus_per_actor=0.5,
                       concurrent_batches=args.concurrent_batches)
    with open(work / "job.log", "a") as log:
        m = run(cfg, stream=log)
    t = m["throughput"]
    gen_s = m["engines"]["generation_s"]  # the generation phase less the actor's start-up
    return {"in_flight": in_flight, "trajectories": m["counts"]["trajectories"], "generation_s": gen_s,
            "traj_per_s": round(m["counts"]["trajectories"] / gen_s, 3),
            "steady_traj_per_s": t["steady_trajectories_per_s"], "phase_traj_per_s": t["trajectories_per_s"], "load_s": m["engines"]["load_s"]}


def main() -> int:
    from tribunal.training.toy.recipe import COMMITTED

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(COMMITTED / "toy-grm"))
    p.add_argument("--template", default="toy")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--concurrent-batches", type=int, default=None, help="the job's batches in flight (default: the engine's, 4)")
    p.add_argument("--in-flight", type=int, default=64, help="in-flight requests of the job and the bare client compared")
    p.add_argument("--sweep", default="1,4,16,64", help="in-flight counts the job is run at")
    p.add_argument("--json", help="write the figures here too")
    args = p.parse_args()

    from openai_proxy import VLLMServer

    from tribunal.cluster.ray_cluster import connect

    work = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    t0 = time.perf_counter()
    server = VLLMServer(args.model, work / "server.log")
    print(f"server up in {time.perf_counter() - t0:.0f}s on {server.base_url} (log {work / 'server.log'})", flush=True)
    try:
        connect(None, num_cpus=2)
        served = server.models[0]
        seed_of = iter(range(1, 1000))
        warm = job_requests(args.model, args.template, samples(args.samples, next(seed_of)), args.k, 0)
        asyncio.run(bare(server.base_url, served, warm, args.in_flight, args.temperature, args.max_tokens))
        big = 3 * args.samples
        reqs = job_requests(args.model, args.template, samples(big, next(seed_of)), args.k, 0)
        secs, gens = asyncio.run(bare(server.base_url, served, reqs, args.in_flight, args.temperature, args.max_tokens))
        bare_rate = gens / secs
        print(f"bare client: {len(reqs)} requests, {gens} generations in {secs:.2f}s = {bare_rate:.2f} traj/s "
              f"({args.in_flight} in flight)", flush=True)
        reqs = job_requests(args.model, args.template, samples(big, next(seed_of)), args.k, 0)
        esecs, egens = run_engine(args, server.base_url, reqs, args.in_flight)
        engine_rate = egens / esecs
        print(f"engine alone (no Ray): {egens} generations in {esecs:.2f}s = {engine_rate:.2f} traj/s; "
              f"ratio engine / bare client: {engine_rate / bare_rate:.3f}", flush=True)
        small = run_job(args, server.base_url, samples(args.samples, next(seed_of)), args.in_flight, work)
        job = run_job(args, server.base_url, samples(big, next(seed_of)), args.in_flight, work)
        marginal = (job["trajectories"] - small["trajectories"]) / max(job["generation_s"] - small["generation_s"], 1e-9)
        for r in (small, job):
            print(f"job:         {r['trajectories']} trajectories in {r['generation_s']:.1f}s once the actor is up = {r['traj_per_s']} traj/s "
                  f"(actor start {r['load_s']} s)", flush=True)
        ratio = marginal / bare_rate
        print(f"job marginal rate (the extra {job['trajectories'] - small['trajectories']} trajectories of the larger run): "
              f"{marginal:.2f} traj/s; ratio job / bare client: {ratio:.3f} (goal >= 0.95)", flush=True)
        sweep = []
        for m in [int(x) for x in args.sweep.split(",") if x]:
            r = run_job(args, server.base_url, samples(args.samples, next(seed_of)), m, work)
            sweep.append(r)
            print(f"  in flight {m:4d}: {r['traj_per_s']} traj/s over {r['trajectories']} trajectories, fixed costs included", flush=True)
        figures = {"bare_traj_per_s": round(bare_rate, 3), "engine_traj_per_s": round(engine_rate, 3), "job_small": small, "job": job,
                   "job_marginal_traj_per_s": round(marginal, 3), "ratio": round(ratio, 3), "sweep": sweep, "args": vars(args)}
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
