"""demo: the README's main command, and small synthetic data for tests and benches.

``tribunal demo`` runs the real pipeline (embedded local Ray, local files) with the committed toy
GRM and meta-RM in ``training/toy/models/`` (built by ``tribunal recipe toy-grm --export
training/toy/models``) on held-out toy samples: sample k = 16 trajectories per sample, score them
with the meta-RM, vote, and evaluate voting and meta-RM guided voting at k = 1, 2, 4, 8, 16
(``tribunal eval``) beside a greedy pass: the table is printed, the plot written. About 4.5 minutes
on 2 CPU cores with the default 50 samples (transformers; ``--engine vllm`` is faster where vLLM
is installed).

Run::

    tribunal demo [--output demo/run] [--samples 50] [--k 16]

The helpers below make deterministic synthetic samples and rollouts for tests and benches.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from tribunal.jobs.pipeline.config import check, opt
from tribunal.schemas.errors import TribunalError


def demo_rows(count: int = 32, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(count):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        good = f"{a} + {b} = {a + b}. Adding the tens and then the units gives {a + b}."
        bad = f"{a} + {b} = {a + b + rng.choice([-10, -1, 1, 10])}."
        question = f"What is {a} + {b}? Explain briefly."
        responses, labels = ([good, bad], [1.0, 0.0]) if rng.random() < 0.5 else ([bad, good], [0.0, 1.0])
        rows.append({
            "id": f"demo-{i:03d}",
            "context": [{"role": "user", "content": question}],
            "prompt": None,
            "responses": responses,
            "labels": labels,
        })
    rows.append({"id": "demo-bad-1", "context": [{"role": "user", "content": "Hello?"}], "prompt": None, "responses": [], "labels": []})
    rows.append({"id": "demo-bad-2", "context": None, "prompt": "Pick one.", "responses": ["A", "B"], "labels": [1.0, 1.0]})
    return rows


def synthetic_rows(count: int, n: int = 2, labelled: bool = True, prefix: str = "s") -> list[dict]:
    """Small, deterministic reward samples with a unique best response each (tests and benches)."""
    rows = []
    for i in range(count):
        responses = [f"Answer {j} to question {i}: " + "word " * (j + 1) for j in range(n)]
        row = {"id": f"{prefix}{i:04d}", "context": [{"role": "user", "content": f"Question {i}: what is {i} + {i}?"}], "responses": responses}
        if labelled:
            best = i % n
            row["labels"] = [1.0 if j == best else 0.0 for j in range(n)]
        rows.append(row)
    return rows


def write_demo_samples(path: str | Path, count: int = 32, seed: int = 0) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(demo_rows(count, seed)), path)
    return path


# ---------------------------------------------------------------------------------------------
# `tribunal demo`: the committed toy GRM and meta-RM (training/toy) on held-out toy samples.


@dataclass(frozen=True)
class DemoConfig:
    """The README's main command: the real pipeline with the committed toy GRM and meta-RM."""

    output: str = opt("demo/run", "run directory (samples, trajectories, meta scores, votes, the eval report)")
    samples: int = opt(50, "held-out toy samples (the test split: never trained on)")
    k: int = opt(16, "trajectories per sample; the report votes at every power of two up to k")
    model: str = opt("", "GRM directory (default: the committed toy GRM)")
    meta_rm: str = opt("", "meta-RM directory (default: the committed toy meta-RM)")
    seed: int = opt(0, "seed of the samples and of sampling")
    temperature: float = opt(0.8, "sampling temperature (the toy recipe's rft step samples at the same)")
    batch_size: int = opt(25, "samples per engine call")
    engine: str = opt("transformers", "generation backend (vllm: needs vLLM installed)", choices=("transformers", "vllm"))
    greedy: bool = opt(True, "also run a greedy (temperature 0) pass, reported beside the curves")
    address: str | None = opt(None, "Ray cluster address (default: an embedded local Ray)")

    def __post_init__(self) -> None:
        check(self.samples >= 1, "samples", f"must be >= 1, got {self.samples}")
        check(self.k >= 1, "k", f"must be >= 1, got {self.k}")


def run(cfg: DemoConfig, *, stream=None) -> dict:
    from tribunal.jobs import eval as eval_job
    from tribunal.jobs import label
    from tribunal.training.toy import recipe, task

    stream = stream or sys.stderr
    out = Path(cfg.output)
    model = cfg.model or str(recipe.COMMITTED / "toy-grm")
    meta_rm = cfg.meta_rm or str(recipe.COMMITTED / "toy-metarm")
    for what, path in (("GRM", model), ("meta-RM", meta_rm)):
        if not (Path(path) / "config.json").is_file():
            raise TribunalError(
                f"demo: no toy {what} at {path}: build the toy models with "
                f"`tribunal recipe toy-grm --output runs/toy --export {recipe.COMMITTED}` (or pass --model and --meta-rm)"
            )
    samples = out / "samples.parquet"
    recipe.write_samples(task.samples(cfg.samples, seed=cfg.seed, split="test", prefix="test-"), samples)
    print(f"[demo] {cfg.samples} held-out toy samples -> {samples}", file=stream)
    print(f"[demo] label: sample k={cfg.k} with {model}, score with the meta-RM {meta_rm}, vote", file=stream)
    label.run(label.LabelConfig(
        input=str(samples), output=str(out / "label"), model=model, meta_rm=meta_rm, k=cfg.k, template=task.TEMPLATE,
        temperature=cfg.temperature, max_tokens=320, batch_size=cfg.batch_size, seed=cfg.seed, address=cfg.address,
        overwrite=True, tie="random", **recipe.engine_options(cfg.engine),
    ), stream=stream)
    if cfg.greedy:
        from tribunal.jobs import sample

        print("[demo] greedy pass (temperature 0, one trajectory per sample)", file=stream)
        sample.run(sample.SampleConfig(
            input=str(samples), output=str(out / "greedy"), model=model, k=1, template=task.TEMPLATE, temperature=0.0,
            max_tokens=320, batch_size=cfg.batch_size, seed=cfg.seed, address=cfg.address, overwrite=True,
            **recipe.engine_options(cfg.engine),
        ), stream=stream)
    ks = ",".join(str(2**i) for i in range(cfg.k.bit_length()) if 2**i <= cfg.k)
    report = eval_job.run(eval_job.EvalConfig(
        input=str(out / "label" / "scored"), output=str(out / "eval"), ks=ks, samples=str(samples), seed=cfg.seed,
        greedy=str(out / "greedy") if cfg.greedy else "", overwrite=True,
    ), stream=stream)
    print(f"[demo] done: table {out / 'eval' / 'report.md'}, plot {out / 'eval' / 'scaling.png'}", file=stream)
    return report



def main(argv: list[str] | None = None) -> int:
    from tribunal.jobs.cli import run_main

    return run_main("demo", argv)


def synthetic_rollouts(prompts: int, per_prompt: int = 8, seed: int = 0, with_text: bool = True, first_prompt: int = 0):
    """Scored rollouts (``arrow.SCORED_ROLLOUT`` columns that ``filter`` and ``export`` read), as a
    pyarrow Table, built with numpy so that millions of rows take seconds (tests and benches).

    Each prompt gets its own reward spread (some prompts all-equal, some with null rewards), so
    every filter reason occurs. Rows are in a shuffled order, as a sharded scoring run leaves them.
    """
    import numpy as np
    import pyarrow as pa

    from tribunal.schemas import arrow
    from tribunal.schemas import columns as c

    rng = np.random.default_rng(seed)
    n = prompts * per_prompt
    pid = np.repeat(np.arange(first_prompt, first_prompt + prompts), per_prompt)
    spread = rng.choice([0.0, 0.05, 0.2, 0.5], size=prompts)[pid - first_prompt]
    reward = np.clip(rng.normal(0.5, 1.0, n) * spread + 0.5, 0, 1)
    null = rng.random(n) < 0.02
    order = rng.permutation(n)
    pid, reward, null = pid[order], reward[order], null[order]
    rollout_index = np.tile(np.arange(per_prompt, dtype=np.int32), prompts)[order]
    ids = pa.array(np.char.add("p", pid.astype(str)))
    cols = {
        c.PROMPT_ID: ids,
        c.ROLLOUT_INDEX: pa.array(rollout_index, pa.int32()),
        c.REWARD: pa.array(reward, pa.float64(), mask=null),
    }
    if with_text:
        q = pa.array(np.char.add("What is ", pid.astype(str)))
        ctx = pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32)),
                                       pa.StructArray.from_arrays([pa.array(["user"] * n), q], fields=list(arrow.MESSAGE)))
        cols[c.CONTEXT] = ctx
        cols[c.RESPONSE] = pa.array(np.char.add(np.char.add("<think>...</think><answer>", rollout_index.astype(str)), "</answer>"))
        cols[c.REFERENCE] = pa.array(np.char.add("ref", pid.astype(str)))
        cols[c.DATA_SOURCE] = pa.array(["synthetic"] * n)
    return pa.table(cols)


if __name__ == "__main__":
    sys.exit(main())
