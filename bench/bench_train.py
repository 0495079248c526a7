"""``train sft`` throughput against a bare PyTorch loop, and the rank-sharded loader's speed and memory.

In one run, each part in its own subprocess (so its peak RSS, ``ru_maxrss``, is its own):

(a) ``trainer``: ``tribunal.training.trainer`` (the DeepSpeed trainer, ZeRO-0, fp32, one process,
    gloo) on a synthetic SFT corpus of ``--rows`` rows; tokens/s over the steps after the first
    ``--warmup`` (engine start-up and the first steps excluded), loader and tokenization included;
(b) ``bare``: the same model (``AutoModelForCausalLM`` from the same directory), the same batches
    (built by the same reader and ``SftTask.prepare`` beforehand, so the loop itself does no data
    work), the same loss (completion tokens only, summed / token count), ``torch.optim.AdamW``
    with the same settings, gradient clipping 1.0: tokens/s over the same steps;
(c) ``loader``: ``ShardedReader.batches`` + ``SftTask.prepare`` (tokenization) alone: examples/s,
    against the trainer's consumption in (a);
(d) ``rss``: ``ShardedReader.batches`` over a corpus of ``--rows`` and one of 10x as many rows
    (same row-group size), reading every row: peak RSS of each (flat = memory independent of size);
(e) ``bucketed``: (a) again with length bucketing (``--bucket-window``, default 8 global batches),
    same steps, same rows per epoch; and ``padding``: the reader + ``SftTask.prepare`` without and
    with bucketing over the same steps, counting the padded positions the model computes
    (batch x longest row) against the real tokens.

Prints the ratio (a)/(b) (goal >= 0.9), loader examples/s vs trainer examples/s, and the peak RSS
at 1x and 10x. Nothing here asserts on time.

Run::

    .venv/bin/python bench/bench_train.py --model /work/wt/.tiny/grm --rows 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import finish_child, spawn  # noqa: E402


def write_corpus(root: Path, rows: int, row_group: int = 256, per_file: int = 5000) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tribunal.schemas import arrow

    root.mkdir(parents=True, exist_ok=True)
    words = "the score of each response follows from the criteria weights and the analysis".split()
    for f in range(0, rows, per_file):
        batch = []
        for i in range(f, min(rows, f + per_file)):
            q = " ".join(words[(i + j) % len(words)] for j in range(12 + i % 17))
            a = "Analysis: " + " ".join(words[(i * 3 + j) % len(words)] for j in range(20 + i % 23)) + f"\nScores: \\boxed{{{i % 10 + 1}}}"
            user, asst = {"role": "user", "content": q}, {"role": "assistant", "content": a}
            batch.append({"id": f"s{i}", "sample_index": 0, "hinted": False, "permutation": [0], "messages": [user, asst], "prompt": [user], "completion": [asst]})
        pq.write_table(pa.Table.from_pylist(batch, schema=arrow.SFT), root / f"part-{f // per_file:05d}.parquet", row_group_size=row_group)
    (root / "_manifest.json").write_text(json.dumps({"rows": rows}))
    return str(root)


def _cfg(args, output: str, bucket: int = 0):
    from tribunal.training.trainer import CONFIGS, TrainConfig

    return TrainConfig(data=args.data, model=args.model, output=output, deepspeed=str(CONFIGS / "zero0.json"), micro_batch=args.micro_batch,
                       lr=1e-4, max_steps=args.steps, log_every=1, save_every=10**9, max_len=512, nproc=1, seed=0, bucket_window=bucket)


def child_trainer(args) -> dict:
    from tribunal.training.trainer import train

    out = tempfile.mkdtemp(prefix="bench_train_")
    os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(args.port)})
    t0 = time.perf_counter()
    train(_cfg(args, out, args.bucket), "sft")
    wall = time.perf_counter() - t0
    recs = [json.loads(l) for l in Path(out, "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r.get("event") == "train"][args.warmup :]  # log_every=1: one record per step
    seconds, tokens, examples = (sum(r[k] for r in steps) for k in ("seconds", "tokens", "examples"))
    return {"tokens_per_s": tokens / seconds, "examples_per_s": examples / seconds, "steps": len(steps), "wall_s": wall}


def _batches(args):
    """The trainer's batches, prepared exactly as it prepares them (world 1)."""
    from tribunal.training.data import Corpus, ShardedReader
    from tribunal.training.sft import SftTask

    cfg = _cfg(args, tempfile.mkdtemp())
    task = SftTask(cfg, 1)
    reader = ShardedReader(Corpus.open(args.data, SftTask.REQUIRED), 0, 1, args.micro_batch, 1, cfg.seed, cfg.shuffle_window)
    return task, reader


def child_bare(args) -> dict:
    import torch
    import torch.nn.functional as F

    task, reader = _batches(args)
    model = task.model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    prepared = []
    for mb in reader.batches(0, 1):
        prepared.append(task.prepare(mb.rows, {}))
        if len(prepared) == args.steps:
            break
    tokens = seconds = 0.0
    for i, p in enumerate(prepared):
        t0 = time.perf_counter()
        t = p.tensors
        logits = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits.float()
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), t["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum")
        (loss / max(p.norm, 1.0)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= args.warmup:
            seconds += time.perf_counter() - t0
            tokens += p.tokens
    n = len(prepared) - args.warmup
    return {"tokens_per_s": tokens / seconds, "examples_per_s": args.micro_batch * n / seconds, "steps": n}


def child_loader(args) -> dict:
    task, reader = _batches(args)
    t0 = time.perf_counter()
    n = 0
    for mb in reader.batches(0, 1):
        task.prepare(mb.rows, {})
        n += len(mb.rows)
    return {"examples_per_s": n / (time.perf_counter() - t0), "examples": n}


def child_padding(args) -> dict:
    """Positions computed (micro-batch x its longest row) and real tokens over one epoch."""
    from tribunal.training.data import Corpus, ShardedReader
    from tribunal.training.sft import SftTask

    task = SftTask(_cfg(args, tempfile.mkdtemp()), 1)
    out = {}
    for bucket in (0, args.bucket_window):
        reader = ShardedReader(Corpus.open(args.data, SftTask.REQUIRED), 0, 1, args.micro_batch, 1, 0, 8, bucket_window=bucket)
        padded = real = 0
        for mb in reader.batches(0, 1):  # one epoch: the same rows either way
            p = task.prepare(mb.rows, {})
            padded += p.tensors["input_ids"].numel()
            real += p.tokens
        out[f"bucket{bucket}"] = {"positions": padded, "tokens": real, "padding_share": 1 - real / padded}
    return out


def child_rss(args) -> dict:
    import resource

    from tribunal.training.data import Corpus, ShardedReader
    from tribunal.training.sft import SftTask

    reader = ShardedReader(Corpus.open(args.data, SftTask.REQUIRED), 0, 1, args.micro_batch, 1, 0, 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # imports, footers and the epoch order
    t0 = time.perf_counter()
    n = sum(len(mb.rows) for mb in reader.batches(0, 1))
    return {"examples": n, "examples_per_s": n / (time.perf_counter() - t0), "rss_after_imports_kib": before}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a causal LM directory (the tiny GRM: /work/wt/.tiny/grm)")
    p.add_argument("--rows", type=int, default=2000, help="corpus rows for (a)-(c), and the 1x corpus of (d)")
    p.add_argument("--rss-rows", type=int, default=20000, help="rows of the 1x corpus of (d) (10x: ten times as many)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps timed in (a) and (b)")
    p.add_argument("--warmup", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--port", type=int, default=29573)
    p.add_argument("--bucket-window", type=int, default=8, help="global batches per length-bucketing window in (e)")
    p.add_argument("--only", help="comma-separated parts to run (trainer,bare,loader,rss,bucketed,padding; default all)")
    p.add_argument("--bucket", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--child", choices=("trainer", "bare", "loader", "rss", "padding"), help=argparse.SUPPRESS)
    p.add_argument("--child-result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        r = {"trainer": child_trainer, "bare": child_bare, "loader": child_loader, "rss": child_rss, "padding": child_padding}[args.child](args)
        return finish_child(args.child_result, r)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_train_data_"))
    only = set(args.only.split(",")) if args.only else {"trainer", "bare", "loader", "rss", "bucketed", "padding"}
    data = write_corpus(tmp / "x1", args.rows)
    common = ["--model", args.model, "--rows", str(args.rows), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--micro-batch", str(args.micro_batch), "--port", str(args.port), "--bucket-window", str(args.bucket_window)]
    runs = [("trainer", data, []), ("bare", data, []), ("loader", data, []), ("bucketed", data, ["--bucket", str(args.bucket_window)]),
            ("padding", data, [])]
    if "rss" in only:
        runs += [("rss", write_corpus(tmp / "rss1", args.rss_rows), []), ("rss10", write_corpus(tmp / "rss10", args.rss_rows * 10), [])]
    res = {}
    for name, d, extra in runs:
        if name not in only and not (name == "rss10" and "rss" in only):
            continue
        child = {"rss10": "rss", "bucketed": "trainer"}.get(name, name)
        res[name] = spawn(__file__, [*common, "--data", d, "--child", child, *extra])
    print(json.dumps(res, indent=2))
    a = res.get("trainer")
    if a and "bare" in res:
        b = res["bare"]
        print(f"train sft (DeepSpeed ZeRO-0, 1 process): {a['tokens_per_s']:,.0f} tok/s; bare PyTorch loop: {b['tokens_per_s']:,.0f} tok/s; "
              f"ratio {a['tokens_per_s'] / b['tokens_per_s']:.3f} (goal >= 0.9)")
    if a and "loader" in res:
        print(f"loader + tokenization: {res['loader']['examples_per_s']:,.0f} examples/s vs trainer consumption {a['examples_per_s']:,.1f} examples/s "
              f"({res['loader']['examples_per_s'] / a['examples_per_s']:.0f}x)")
    if a and "bucketed" in res:
        k = res["bucketed"]
        print(f"length bucketing (window {args.bucket_window} global batches): {k['tokens_per_s']:,.0f} tok/s, {k['examples_per_s']:,.1f} examples/s "
              f"vs {a['tokens_per_s']:,.0f} tok/s, {a['examples_per_s']:,.1f} examples/s without: {k['tokens_per_s'] / a['tokens_per_s']:.2f}x")
    if "padding" in res:
        pad = res["padding"]
        off, on = pad["bucket0"], pad[f"bucket{args.bucket_window}"]
        print(f"padding over one epoch of {args.rows} rows, micro-batch {args.micro_batch}: {off['padding_share']:.1%} of the positions computed without bucketing, "
              f"{on['padding_share']:.1%} with ({off['positions']:,} -> {on['positions']:,} positions for {off['tokens']:,} tokens)")
    for name, n in (("rss", args.rss_rows), ("rss10", args.rss_rows * 10)):
        if name in res:
            r = res[name]
            print(f"loader over {n:,} rows: peak RSS {r['peak_rss_kib'] / 1024:.0f} MiB (before reading: {r['rss_after_imports_kib'] / 1024:.0f} MiB), "
                  f"{r['examples_per_s']:,.0f} rows/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
