"""Ray Data stages of ``score``: rollouts in (``arrow.ROLLOUT``), scored rollouts out (``arrow.SCORED_ROLLOUT``).

Each stage is an actor class holding one engine (built in the actor), called on a block of whole
prompt groups: the block is the unit of work and of resume. ``write_scored_stage`` writes a
block as one atomic shard and emits its counts for the driver's progress line.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from tribunal.jobs.engines import prompt_too_long
from tribunal.jobs.pipeline.stages import require, shard_name
from tribunal.schemas import arrow
from tribunal.schemas import columns as c

ROLLOUT_COLUMNS = tuple(arrow.ROLLOUT.names)
# A rollout whose scoring text would not fit the model's context gets a null reward with this
# reason (``engines.prompt_too_long``): it is never sent to the engine.
TOO_LONG = "prompt_too_long"


def prompt_text(engine, context: Sequence[dict], chat_template: bool) -> str:
    """The prompt as the policy saw it: its chat template with the generation prompt, or (no
    template) the turns' contents joined by blank lines."""
    if chat_template:
        return engine.render_chat(list(context), add_generation_prompt=True)
    return "\n\n".join(m[c.CONTENT] for m in context)


def _scored(rows: list[dict], extra: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{**r, **e} for r, e in zip(rows, extra)], schema=arrow.SCORED_ROLLOUT)


class ProbScoreStage:
    """RLPR probability rewards (SPEC section 7) through ``engine.score_continuation``.

    Needs: the ROLLOUT columns, a reference on every row. One engine call per block: the ``r``
    request of every rollout with an answer section, plus one ``r'`` request per (prompt,
    reference) of the block: the debiasing pass is paid once per prompt, not per rollout.
    """

    def __init__(self, engine_cfg, answer_format, format_weight: float | None, chat_template: bool = True, board=None):
        import time

        from tribunal.jobs.engines import build_engine
        from tribunal.jobs.pipeline.progress import Reporter

        t0 = time.perf_counter()
        self.engine = build_engine(engine_cfg)
        self.reporter = Reporter(board)
        self.reporter.engine_loaded(time.perf_counter() - t0)
        self.fmt = answer_format
        self.format_weight = format_weight
        self.chat_template = chat_template

    def __call__(self, batch: pa.Table) -> pa.Table:
        from tribunal.jobs.engines import ScoreRequest
        from tribunal.jobs.rewards import prob

        require(batch, "ProbScoreStage", ROLLOUT_COLUMNS)
        rows = batch.to_pylist()
        prompts: dict[str, str] = {}
        requests: list[ScoreRequest] = []
        debias_at: dict[tuple[str, str], int] = {}  # (prompt_id, reference) -> request index
        plan = []  # per row: (span or reason, r request index or None, r' key or None)
        for row in rows:
            pid, ref = row[c.PROMPT_ID], row[c.REFERENCE]
            if ref is None or not ref.strip():
                raise ValueError(f"ProbScoreStage: rollout ({pid}, {row[c.ROLLOUT_INDEX]}) has no reference (validation quarantines these)")
            if pid not in prompts:
                prompts[pid] = prompt_text(self.engine, row[c.CONTEXT], self.chat_template)
            span = prob.find_answer(row[c.RESPONSE], self.fmt)
            if isinstance(span, str):
                plan.append((span, None, None))
                continue
            req = ScoreRequest(*prob.rollout_request(prompts[pid], row[c.RESPONSE], ref, span))
            if prompt_too_long(self.engine, req.prefix + req.continuation + req.suffix):
                plan.append((TOO_LONG, None, None))  # never sent: it would crash or stall the engine
                continue
            requests.append(req)
            key = (pid, ref)
            if key not in debias_at:
                debias_at[key] = -1  # placeholder: the r' requests go after every r request
            plan.append((span, len(requests) - 1, key))
        for key in debias_at:
            req = ScoreRequest(*prob.debias_request(prompts[key[0]], key[1], self.fmt))
            if prompt_too_long(self.engine, req.prefix + req.continuation + req.suffix):
                debias_at[key] = None
                continue
            requests.append(req)
            debias_at[key] = len(requests) - 1
        results = self.engine.score_continuation(requests) if requests else []
        extra = []
        for span, at, key in plan:
            if span is TOO_LONG or (key is not None and debias_at[key] is None):
                extra.append({c.REWARD: None, c.REWARD_REASON: "prompt_too_long", c.R_RAW: None, c.R_PRIME: None,
                              c.FORMAT_OK: None, c.SCORED_TOKENS: 0, c.VALID_SCORES: None})
                continue
            if at is None:
                reward, reason = prob.prob_reward(None, None, span, self.format_weight)
                extra.append({c.REWARD: reward, c.REWARD_REASON: reason, c.R_RAW: None, c.R_PRIME: None,
                              c.FORMAT_OK: False, c.SCORED_TOKENS: 0, c.VALID_SCORES: None})
                continue
            res, res_prime = results[at], results[debias_at[key]]
            r, r_prime = prob.mean_prob(res.logprobs), prob.mean_prob(res_prime.logprobs)
            reward, reason = prob.prob_reward(r, r_prime, span, self.format_weight)
            extra.append({c.REWARD: reward, c.REWARD_REASON: reason, c.R_RAW: r, c.R_PRIME: r_prime,
                          c.FORMAT_OK: span.format_ok, c.SCORED_TOKENS: len(res.token_ids), c.VALID_SCORES: None})
        self.reporter.add(requests=len(requests), rows=len(rows))
        self.reporter.flush()
        return _scored(rows, extra)


class GrmScoreStage:
    """GRM judgments of rollouts (SPEC sections 2 and 5) through ``engine.generate``.

    ``pointwise``: each rollout alone (n = 1) in ``k`` samples; its reward is the mean of its
    valid scores. ``group``: a prompt's rollouts, in chunks of at most ``max_n`` (rollout_index
    order), are the ``n`` responses of one sample, judged ``k`` times with seeded permutations;
    a rollout's reward is its voted total over the valid samples, ``S*_i / valid``. Parse failures
    never vote; a rollout with no valid score gets a null reward and the most common failure.
    """

    def __init__(self, engine_cfg, sampling, template: str, form: str, k: int, max_n: int, seed: int, board=None):
        import time

        from tribunal.jobs.engines import build_engine
        from tribunal.jobs.grm.protocol import load_template
        from tribunal.jobs.pipeline.progress import Reporter

        t0 = time.perf_counter()
        self.engine = build_engine(engine_cfg)
        self.reporter = Reporter(board)
        self.reporter.engine_loaded(time.perf_counter() - t0)
        self.sampling = sampling
        self.template = load_template(template)
        self.form, self.k, self.max_n, self.seed = form, k, max_n, seed

    def _samples(self, rows: list[dict]) -> list[tuple[str, list[int]]]:
        """(sample id, row numbers judged together) in a deterministic order."""
        if self.form == "pointwise":
            return [(f"{r[c.PROMPT_ID]}/{r[c.ROLLOUT_INDEX]}", [i]) for i, r in enumerate(rows)]
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(rows):
            groups.setdefault(r[c.PROMPT_ID], []).append(i)
        out = []
        for pid, members in groups.items():
            members.sort(key=lambda i: rows[i][c.ROLLOUT_INDEX])
            for j in range(0, len(members), self.max_n):
                out.append((f"{pid}/chunk{j // self.max_n}", members[j : j + self.max_n]))
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        from collections import Counter

        from tribunal.jobs.engines import GenerationRequest
        from tribunal.jobs.grm import grm_math
        from tribunal.jobs.grm import trajectories as tr
        from tribunal.jobs.grm.protocol import parse_output

        require(batch, "GrmScoreStage", ROLLOUT_COLUMNS)
        rows = batch.to_pylist()
        samples = self._samples(rows)
        requests, owners = [], []
        failures: list[Counter] = [Counter() for _ in rows]
        for si, (sid, members) in enumerate(samples):
            sample = {c.ID: sid, c.CONTEXT: rows[members[0]][c.CONTEXT], c.RESPONSES: [rows[i][c.RESPONSE] for i in members]}
            problem = self.template.check_n(len(members))
            if problem:
                raise ValueError(f"GrmScoreStage: sample {sid}: {problem}")
            for group in tr.group_specs(tr.plan_trajectories(sid, len(members), self.k, self.seed)):
                prompt = self.engine.render_chat(tr.messages_for(self.template, sample, group[0]))
                if prompt_too_long(self.engine, prompt):  # never sent: it would crash or stall the engine
                    for i in members:
                        failures[i]["prompt_too_long"] += len(group)
                    continue
                requests.append(GenerationRequest(prompt, len(group), tr.request_seed(self.seed, sid, group[0])))
                owners.append((si, group))
        results = self.engine.generate(requests, self.sampling, on_result=self._finished) if requests else []
        self.reporter.flush()
        totals = [0.0] * len(rows)
        valid = [0] * len(rows)
        for (si, group), res in zip(owners, results):
            members = samples[si][1]
            for spec, gen in zip(group, res.generations):
                parsed = parse_output(gen.text, len(members), self.template, truncated=gen.finish_reason == "length")
                if not parsed.ok:
                    for i in members:
                        failures[i][parsed.error] += 1
                    continue
                scores = grm_math.to_original_order(parsed.scores, spec.permutation)
                for i, s in zip(members, scores):
                    totals[i] += s
                    valid[i] += 1
        extra = []
        for i in range(len(rows)):
            if failures[i] and set(failures[i]) == {TOO_LONG}:
                reward, reason = None, TOO_LONG  # never judged: set aside by the write stage
            elif valid[i]:
                reward, reason = totals[i] / valid[i], None
            else:
                reward, reason = None, failures[i].most_common(1)[0][0] if failures[i] else "no_scores"
            extra.append({c.REWARD: reward, c.REWARD_REASON: reason, c.R_RAW: None, c.R_PRIME: None,
                          c.FORMAT_OK: None, c.SCORED_TOKENS: None, c.VALID_SCORES: valid[i]})
        return _scored(rows, extra)

    def _finished(self, res) -> None:
        self.reporter.add(requests=1, rows=len(res.generations), completion_tokens=sum(g.completion_tokens for g in res.generations))


STATS = pa.schema([("shard", pa.string()), ("prompts", pa.int64()), ("rollouts", pa.int64()),
                   ("null_rewards", pa.int64()), ("special", pa.int64()), ("quarantined", pa.int64())])


def set_aside_too_long(batch: pa.Table) -> tuple[pa.Table, pa.Table]:
    """(rollouts to write, quarantine rows): a rollout the model never saw because its text fills
    the model's context is set aside with reason ``prompt_too_long``, as ``sample`` does."""
    import json

    import pyarrow.compute as pc

    too_long = pc.fill_null(pc.equal(batch[c.REWARD_REASON], TOO_LONG), False)
    if not pc.any(too_long).as_py():
        return batch, arrow.QUARANTINE.empty_table()
    aside = batch.filter(too_long)
    rows = [{c.ID: f"{r[c.PROMPT_ID]}/{r[c.ROLLOUT_INDEX]}", c.REASON: TOO_LONG,
             c.DETAIL: "the scoring text fills the model's context (max_model_len / max_position_embeddings); never sent to the engine",
             c.SOURCE_PATH: None, c.RAW: json.dumps({k: r[k] for k in ROLLOUT_COLUMNS if k in r}, ensure_ascii=False, default=str)}
            for r in aside.select([n for n in ROLLOUT_COLUMNS if n in aside.column_names]).to_pylist()]
    return batch.filter(pc.invert(too_long)), pa.Table.from_pylist(rows, schema=arrow.QUARANTINE)


def write_scored_stage(batch: pa.Table, *, out_dir: str, fs, run=None, quarantine_dir: str | None = None) -> pa.Table:
    """Write one block of whole prompt groups as one atomic shard (its ``prompt_too_long``
    rollouts to ``quarantine_dir``); emit its counts."""
    import pyarrow.compute as pc

    from tribunal.cluster.storage import join, write_parquet_atomic

    if len(batch) == 0:
        return STATS.empty_table()
    require(batch, "write_scored_stage", (c.PROMPT_ID, c.ROLLOUT_INDEX, c.REWARD, c.REWARD_REASON))
    if quarantine_dir is not None:
        batch, aside = set_aside_too_long(batch)
        if len(aside):
            write_parquet_atomic(fs, join(quarantine_dir, shard_name(["too_long"] + aside[c.ID].to_pylist())), aside, arrow.QUARANTINE,
                                 publish_if=run and run.current)
        if len(batch) == 0:
            return pa.Table.from_pylist([{"shard": "", "prompts": 0, "rollouts": 0, "null_rewards": 0, "special": 0,
                                          "quarantined": len(aside)}], schema=STATS)
    keys = [f"{p}\x1e{i}" for p, i in zip(batch[c.PROMPT_ID].to_pylist(), batch[c.ROLLOUT_INDEX].to_pylist())]
    name = shard_name(keys)
    if not write_parquet_atomic(fs, join(out_dir, name), batch, arrow.SCORED_ROLLOUT, publish_if=run and run.current):
        return STATS.empty_table()
    return pa.Table.from_pylist([{
        "shard": name,
        "prompts": len(set(batch[c.PROMPT_ID].to_pylist())),
        "rollouts": len(batch),
        "null_rewards": int(pc.sum(pc.is_null(batch[c.REWARD])).as_py() or 0),
        "special": int(pc.sum(pc.is_valid(batch[c.REWARD_REASON])).as_py() or 0),
        "quarantined": len(aside) if quarantine_dir is not None else 0,
    }], schema=STATS)


def blocks_of_prompts(table: pa.Table, rollouts_per_block: int) -> list[pa.Table]:
    """Split canonical rollouts into blocks of whole prompt groups (a group is never split; a
    block holds about ``rollouts_per_block`` rollouts), groups and rollouts in a fixed order."""
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return []
    order = pc.sort_indices(table, sort_keys=[(c.PROMPT_ID, "ascending"), (c.ROLLOUT_INDEX, "ascending")])
    t = table.take(order)
    pids = t[c.PROMPT_ID].to_pylist()
    blocks, start = [], 0
    for i in range(1, len(pids) + 1):
        boundary = i == len(pids) or pids[i] != pids[i - 1]
        if boundary and i - start >= rollouts_per_block:
            blocks.append(t.slice(start, i - start))
            start = i
    if start < len(pids):
        blocks.append(t.slice(start))
    return blocks
