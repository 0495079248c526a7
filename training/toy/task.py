"""The toy task: two-digit arithmetic whose answers a program can check (issue 10).

A seeded generator of reward samples with ground truth, in the canonical sample schema that every
job reads (``id``, ``context``, ``responses``, ``labels``, ``subset``):

- **pairs** and **n > 2** (3 or 4 responses): one correct answer among near misses (off by 1, 2,
  9, 10, 11 or 20, or the digits swapped), labels 1 for the correct one and 0 for the others, so
  the best response is unique (SPEC section 3);
- **single** responses with a 0/1 label, for the single-response template (``toy_single``).

and of GRM-format *teacher trajectories* (SPEC section 2's three lines) that a tiny model can
learn: the criteria, the result worked out digit by digit, each response checked against it, then
the scores::

    Specific Criteria: The answer must equal 23 + 48 (weight 100%).
    Analysis: 3 + 8 = 11, carry 1; 2 + 4 + 1 = 7; 23 + 48 = 71. Response 1 says 71, right. Response 2 says 61, wrong.
    Scores: \\boxed{9, 2}

The teacher's scores are drawn (8-10 for a right answer, 1-4 for a wrong one), so they vary from
trajectory to trajectory as a sampled GRM's do. The prompts are rendered by
``tribunal.jobs.grm.protocol`` with the built-in ``toy`` / ``toy_single`` templates, exactly as the
jobs render them, and the teacher corpus has the SFT corpus schema (``schemas.arrow.SFT``), so
``tribunal train sft`` reads it like an RFT corpus.

Pure Python (no torch, no Ray). The splits are disjoint by construction: a question belongs to
``train``, ``dev`` or ``test`` by a hash of its operands, so no held-out question is ever trained
on.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "SPLITS",
    "TEMPLATE",
    "TEMPLATE_SINGLE",
    "Question",
    "question_split",
    "questions",
    "samples",
    "teacher_completion",
    "teacher_rows",
]

TEMPLATE = "toy"
TEMPLATE_SINGLE = "toy_single"
SPLITS = ("train", "dev", "test")
# Shares of the question space per split (by hash), and the mix of sample shapes.
_SPLIT_SHARES = (0.8, 0.1, 0.1)
_SHAPES = ((2, 0.55), (3, 0.25), (4, 0.20))  # (n responses, share) of multi-response samples
_OFFSETS = (1, 2, 9, 10, 11, 20)
_PHRASINGS = ("The answer is {x}.", "{a} {op} {b} = {x}.", "It is {x}.", "{x}")


@dataclass(frozen=True)
class Question:
    a: int
    op: str  # "+" or "-"
    b: int

    @property
    def answer(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def expression(self) -> str:
        return f"{self.a} {self.op} {self.b}"

    @property
    def text(self) -> str:
        return f"What is {self.expression}?"


def question_split(q: Question) -> str:
    """``train``, ``dev`` or ``test``: a fixed function of the question (never of a seed)."""
    h = int.from_bytes(hashlib.sha256(f"{q.a}{q.op}{q.b}".encode()).digest()[:8], "big") / 2**64
    lo = 0.0
    for split, share in zip(SPLITS, _SPLIT_SHARES):
        lo += share
        if h < lo:
            return split
    return SPLITS[-1]


def questions(rng: random.Random, split: str) -> Iterator[Question]:
    """An endless stream of questions of one split: sums of two 2-digit numbers, differences of
    a 2-digit number and a smaller one."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    while True:
        if rng.random() < 0.5:
            q = Question(rng.randint(10, 99), "+", rng.randint(10, 99))
        else:
            a = rng.randint(20, 99)
            q = Question(a, "-", rng.randint(10, a - 1))
        if question_split(q) == split:
            yield q


def _wrong_answers(q: Question, count: int, rng: random.Random) -> list[int]:
    right = q.answer
    pool = {right + s * d for d in _OFFSETS for s in (1, -1)}
    if right >= 10 and right % 10 != right // 10 % 10 and right < 100:
        pool.add(int(str(right)[::-1]))  # digits swapped
    pool = sorted(x for x in pool if x >= 0 and x != right)
    return rng.sample(pool, count)


def _say(q: Question, x: int, rng: random.Random) -> str:
    return rng.choice(_PHRASINGS).format(a=q.a, op=q.op, b=q.b, x=x)


def samples(count: int, *, seed: int, split: str, single_share: float = 0.0, prefix: str | None = None) -> list[dict]:
    """``count`` canonical reward samples of one split (multi-response, plus a share of singles)."""
    rng = random.Random(f"toy-samples:{seed}:{split}")
    stream = questions(rng, split)
    rows = []
    prefix = prefix if prefix is not None else f"toy-{split}-"
    for i in range(count):
        q = next(stream)
        if rng.random() < single_share:
            correct = rng.random() < 0.5
            x = q.answer if correct else _wrong_answers(q, 1, rng)[0]
            responses, labels, subset = [_say(q, x, rng)], [1.0 if correct else 0.0], "single"
        else:
            n = rng.choices([s for s, _ in _SHAPES], weights=[w for _, w in _SHAPES])[0]
            values = [q.answer, *_wrong_answers(q, n - 1, rng)]
            order = list(range(n))
            rng.shuffle(order)
            responses = [_say(q, values[j], rng) for j in order]
            labels = [1.0 if j == 0 else 0.0 for j in order]
            subset = "pair" if n == 2 else f"n{n}"
        rows.append({
            "id": f"{prefix}{i:06d}",
            "context": [{"role": "user", "content": q.text}],
            "responses": responses,
            "labels": labels,
            "subset": subset,
            "data_source": f"toy-arithmetic/{'add' if q.op == '+' else 'sub'}",
        })
    return rows


def _stated_value(response: str) -> str:
    """The number a response gives as its answer (its last number)."""
    tokens = [t.strip(".") for t in response.split()]
    numbers = [t for t in tokens if t.lstrip("-").isdigit()]
    return numbers[-1] if numbers else "nothing"


def _parse_question(text: str) -> Question:
    a, op, b = text.removeprefix("What is ").removesuffix("?").split()
    return Question(int(a), op, int(b))


def worked(q: Question) -> str:
    """The result worked out digit by digit, as a tiny model can learn it (units, then tens with the
    carry or borrow), ending with the whole equation: ``7 + 4 = 11, carry 1; 4 + 1 + 1 = 6; 47 + 14 = 61.``"""
    a1, a0, b1, b0 = q.a // 10, q.a % 10, q.b // 10, q.b % 10
    if q.op == "+":
        carry = a0 + b0 >= 10
        units = f"{a0} + {b0} = {a0 + b0}" + (", carry 1" if carry else "")
        tens = f"{a1} + {b1}" + (" + 1" if carry else "") + f" = {a1 + b1 + carry}"
    else:
        borrow = a0 < b0
        units = f"{a0 + 10} - {b0} = {a0 + 10 - b0}, borrow 1" if borrow else f"{a0} - {b0} = {a0 - b0}"
        tens = f"{a1} - {b1}" + (" - 1" if borrow else "") + f" = {a1 - b1 - borrow}"
    return f"{units}; {tens}; {q.expression} = {q.answer}."


STYLES = ("plain", "echo", "digits", "marks")


def teacher_completion(sample: dict, view: list[int], rng: random.Random, style: str = "plain") -> str:
    """A correct GRM trajectory for ``sample`` with its responses shown in ``view`` order
    (``view[i]`` = original index of the response shown at position i + 1).

    ``style``: ``plain`` checks each response as "Response 1 says 71, right."; ``echo`` repeats the
    worked answer beside each response's value ("Response 1 says 71, answer 71, right."), which
    puts the two numbers side by side; ``digits`` also lists their digits in pairs from the units up
    ("Response 1 says 93, answer 102, digits 3 2, 9 0, - 1, wrong."), so each comparison a tiny
    model makes is between two adjacent tokens; ``marks`` drops the echo and marks each digit pair
    ``same`` or ``diff`` ("Response 2 says 80, digits 0 0 same, 8 8 same, right."), so every digit
    comparison is a target of its own and the verdict only asks whether any pair differs. (A 4-layer
    model trained on ``digits`` copied and compared the digits but learnt the verdict as a prior by
    position; with ``marks`` its teacher-forced verdicts are right 100% of the time.)"""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    q = _parse_question(sample["context"][-1]["content"])
    responses, labels = sample["responses"], sample["labels"]
    checks, scores = [], []
    single = len(responses) == 1
    for pos, j in enumerate(view, start=1):
        said = _stated_value(responses[j])
        right = labels[j] == 1.0
        who = "The response" if single else f"Response {pos}"
        echo = f", answer {q.answer}" if style in ("echo", "digits") else ""
        if style in ("digits", "marks"):  # digit pairs from the units up ("-" where a number has no digit)
            width = max(len(said), len(str(q.answer)))
            a, b = said.rjust(width, "-")[::-1], str(q.answer).rjust(width, "-")[::-1]
            mark = (lambda x, y: " same" if x == y else " diff") if style == "marks" else (lambda x, y: "")
            echo += ", digits " + ", ".join(f"{x} {y}{mark(x, y)}" for x, y in zip(a, b))
        checks.append(f"{who} says {said}{echo}, {'right' if right else 'wrong'}.")
        if single:
            scores.append(1 if right else 0)
        else:
            scores.append(rng.randint(8, 10) if right else rng.randint(1, 4))
    return (
        f"Specific Criteria: The answer must equal {q.expression} (weight 100%).\n"
        f"Analysis: {worked(q)} {' '.join(checks)}\n"
        f"Scores: \\boxed{{{', '.join(map(str, scores))}}}"
    )


def teacher_rows(sample_rows: list[dict], *, seed: int, per_sample: int = 1, style: str = "plain") -> list[dict]:
    """SFT corpus rows (``schemas.arrow.SFT`` columns): ``per_sample`` teacher trajectories per
    sample, each with its own seeded permutation, prompts rendered by the jobs' own renderer."""
    from tribunal.jobs.grm import protocol

    multi, single = protocol.load_template(TEMPLATE), protocol.load_template(TEMPLATE_SINGLE)
    rng = random.Random(f"toy-teacher:{seed}")
    out = []
    for sample in sample_rows:
        n = len(sample["responses"])
        template = single if n == 1 else multi
        for t in range(per_sample):
            view = list(range(n))
            rng.shuffle(view)
            prompt = protocol.build_messages(template, sample["context"], [sample["responses"][j] for j in view])
            completion = [{"role": "assistant", "content": teacher_completion(sample, view, rng, style)}]
            out.append({
                "id": sample["id"],
                "sample_index": t,
                "hinted": False,
                "permutation": view,
                "messages": prompt + completion,
                "prompt": prompt,
                "completion": completion,
            })
    return out
