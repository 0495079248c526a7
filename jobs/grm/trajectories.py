"""From samples to GRM requests and back: planning trajectories, grouping them, assembling rows.

Pure Python (no Ray, no torch): the engine stage calls these around one ``engine.generate``.

A sample with ``n`` responses needs ``k`` trajectories but has only ``n!`` distinct response
orders (2 for pairs). Trajectories that share a permutation (and hint) become one request with
``n = count`` so the engine prefills the shared prompt once (SPEC section 8).

Response orders (``ORDERS``): ``random`` draws each trajectory's permutation on its own (SPEC
section 4); ``balanced`` assigns them so that every response appears in every displayed slot as
evenly as k allows (``balanced_permutations``). Both are seeded per (run seed, sample id).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from tribunal.jobs.grm import grm_math
from tribunal.jobs.engines import Generation
from tribunal.jobs.grm.protocol import Template, build_messages, parse_output
from tribunal.schemas import columns as c


@dataclass(frozen=True)
class TrajectorySpec:
    """One trajectory to draw: its key parts and what the model will see."""

    sample_index: int
    hinted: bool
    permutation: tuple[int, ...]
    hint: int | None  # 1-based view position of the labelled best response (hinted only)


ORDERS = ("random", "balanced")


def plan_trajectories(sample_id: str, n: int, k: int, seed: int, orders: str = "random") -> list[TrajectorySpec]:
    """The k non-hinted trajectories of a sample, each with its seeded permutation: drawn on its
    own (``random``) or from ``balanced_permutations`` (``balanced``)."""
    if orders == "random":
        perms = [grm_math.draw_permutation(seed, sample_id, j, n) for j in range(k)]
    elif orders == "balanced":
        perms = balanced_permutations(seed, sample_id, n, k)
    else:
        raise ValueError(f"orders must be one of {ORDERS}, got {orders!r}")
    return [TrajectorySpec(j, False, perm, None) for j, perm in enumerate(perms)]


def balanced_permutations(seed: int, sample_id: str, n: int, k: int) -> list[tuple[int, ...]]:
    """k response orders in which every response sits in every displayed slot ``k // n`` or
    ``k // n + 1`` times, and so does every prefix of them (the first k' of a k = 32 run are
    balanced too, as voting at smaller k needs).

    Trajectories come in blocks of n: block ``b`` takes a base order (the permutation the
    ``random`` planner draws for trajectory ``b * n``) and its n cyclic shifts, a Latin square:
    each response once in each slot. The base comes first, the other shifts in a seeded order, so
    trajectory 0 is the ``random`` planner's trajectory 0 and a partial last block is a seeded
    choice of shifts. Pairs: half the trajectories each way (k odd: one extra, either way). A
    fresh base per block varies which responses are shown next to which.
    """
    out: list[tuple[int, ...]] = []
    block = 0
    while len(out) < k:
        base = grm_math.draw_permutation(seed, sample_id, block * n, n)
        shifts = list(range(1, n))
        random.Random(grm_math.stable_seed(seed, "balanced", sample_id, block)).shuffle(shifts)
        for s in [0, *shifts]:
            out.append(tuple(base[(p + s) % n] for p in range(n)))
        block += 1
    return out[:k]


def plan_hinted(sample_id: str, labels: Sequence[float], seed: int) -> TrajectorySpec:
    """The hinted trajectory of a sample: its own permutation, the best response named in the prompt."""
    n = len(labels)
    best = grm_math.unique_argmax(labels)
    if best is None:
        raise ValueError(f"sample {sample_id}: hinted sampling needs labels with a unique maximum")
    perm = grm_math.draw_permutation(seed, sample_id + "\x1fhint", 0, n)
    return TrajectorySpec(0, True, perm, grm_math.invert_permutation(perm)[best] + 1)


def group_specs(specs: Sequence[TrajectorySpec]) -> list[list[TrajectorySpec]]:
    """Specs sharing (permutation, hint) in first-seen order; members keep sample_index order."""
    groups: dict[tuple, list[TrajectorySpec]] = {}
    for s in specs:
        groups.setdefault((s.permutation, s.hint), []).append(s)
    return list(groups.values())


def request_seed(seed: int, sample_id: str, spec: TrajectorySpec) -> int:
    """Seed of the request for a group: fixed by (run seed, sample, permutation, hint), not by batching."""
    return grm_math.stable_seed(seed, "gen", sample_id, spec.permutation, spec.hint) % (2**31 - 1)


def messages_for(template: Template, sample: dict, spec: TrajectorySpec) -> list[dict]:
    responses = sample[c.RESPONSES]
    view = [responses[i] for i in spec.permutation]
    return build_messages(template, sample[c.CONTEXT], view, hint=spec.hint)


def trajectory_row(
    template: Template,
    sample: dict,
    spec: TrajectorySpec,
    gen: Generation,
    prompt_tokens: int,
) -> dict:
    """One row of the trajectory schema: parse in view order, map scores back, judge correctness."""
    n = len(sample[c.RESPONSES])
    parsed = parse_output(gen.text, n, template, truncated=gen.finish_reason == "length")
    scores = grm_math.to_original_order(parsed.scores, spec.permutation) if parsed.ok else None
    labels = sample.get(c.LABELS)
    correct = grm_math.is_correct(scores, labels) if labels is not None else None
    return {
        c.ID: sample[c.ID],
        c.SAMPLE_INDEX: spec.sample_index,
        c.HINTED: spec.hinted,
        c.N_RESPONSES: n,
        c.PERMUTATION: list(spec.permutation),
        c.TEXT: gen.text,
        c.SCORES: list(scores) if scores is not None else None,
        c.PARSE_ERROR: parsed.error,
        c.PRINCIPLES: parsed.principles,
        c.CRITIQUE: parsed.critique,
        c.LABELS: labels,
        c.CORRECT: correct,
        c.CONTEXT: sample[c.CONTEXT],
        c.RESPONSES: sample[c.RESPONSES],
        c.FINISH_REASON: gen.finish_reason,
        c.PROMPT_TOKENS: prompt_tokens,
        c.COMPLETION_TOKENS: gen.completion_tokens,
    }


def needs_hint(mode: str, rows: Sequence[dict]) -> bool:
    """Whether a sample whose non-hinted trajectories are ``rows`` gets a hinted trajectory."""
    return grm_math.hint_wanted(mode, [bool(r[c.CORRECT]) for r in rows if not r[c.HINTED]])


def set_verdicts(rows: list[dict], mode: str) -> None:
    """Fill ``verdict`` and ``outcome`` of one sample's rows (all of them, hinted included)."""
    outcome, verdicts = grm_math.rft_verdicts(
        [r[c.HINTED] for r in rows], [bool(r[c.CORRECT]) for r in rows], [r[c.PARSE_ERROR] for r in rows], mode
    )
    for r, v in zip(rows, verdicts):
        r[c.VERDICT] = v
        r[c.OUTCOME] = outcome


def prefill_tokens(groups: Sequence[Sequence[TrajectorySpec]], prompt_tokens: dict[tuple, int]) -> tuple[int, int]:
    """(tokens prefilled with grouping, tokens prefilled with one request per trajectory)."""
    grouped = sum(prompt_tokens[(g[0].permutation, g[0].hint)] for g in groups)
    flat = sum(prompt_tokens[(g[0].permutation, g[0].hint)] * len(g) for g in groups)
    return grouped, flat
