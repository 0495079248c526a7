"""The toy task (training/toy/task.py): ground truth, splits, and teacher trajectories that the real
parser reads as correct. Pure Python: no model, no Ray."""

from __future__ import annotations

import random

import pytest

from tribunal.jobs.grm import grm_math, protocol
from tribunal.training.toy import task


def test_worked_arithmetic_is_right_for_every_question():
    for a in range(10, 100):
        for b in range(10, 100):
            q = task.Question(a, "+", b)
            assert task.worked(q).endswith(f"= {a + b}.")
            if b < a:
                q = task.Question(a, "-", b)
                steps = task.worked(q)
                assert steps.endswith(f"= {a - b}.")
                # The digit steps are themselves true: units, then tens with the borrow.
                units, tens, _ = steps.split("; ")
                lhs, rhs = units.split(", borrow 1")[0].split(" = ")
                x, y = map(int, lhs.split(" - "))
                assert x - y == int(rhs) == (a - b) % 10
                assert int(tens.split(" = ")[1]) == (a - b) // 10


def test_splits_are_disjoint_and_deterministic():
    seen = {}
    for split in task.SPLITS:
        rows = task.samples(300, seed=3, split=split, single_share=0.2)
        assert rows == task.samples(300, seed=3, split=split, single_share=0.2)
        for r in rows:
            q = r["context"][0]["content"]
            assert seen.setdefault(q, split) == split, f"{q} is in {seen[q]} and {split}"
    assert task.samples(50, seed=1, split="test") != task.samples(50, seed=2, split="test")


def test_samples_have_a_unique_correct_response_and_the_expected_shapes():
    rows = task.samples(2000, seed=0, split="train", single_share=0.15)
    shapes = {r["subset"] for r in rows}
    assert shapes == {"pair", "n3", "n4", "single"}
    singles = [r for r in rows if r["subset"] == "single"]
    assert 0.10 < len(singles) / len(rows) < 0.20
    assert {r["labels"][0] for r in singles} == {0.0, 1.0}
    for r in rows:
        q = task._parse_question(r["context"][0]["content"])
        values = [int(task._stated_value(x)) for x in r["responses"]]
        assert [float(v == q.answer) for v in values] == r["labels"]
        if len(values) > 1:
            assert sorted(r["labels"]) == [0.0] * (len(values) - 1) + [1.0]
            assert len(set(values)) == len(values)


@pytest.mark.parametrize("seed,style", [(0, "plain"), (1, "echo"), (2, "digits"), (3, "marks")])
def test_teacher_trajectories_parse_and_are_correct_under_the_real_rules(seed, style):
    rows = task.samples(400, seed=seed, split="train", single_share=0.2)
    teacher = task.teacher_rows(rows, seed=seed, per_sample=2, style=style)
    assert all((", answer " in t["completion"][0]["content"]) == (style in ("echo", "digits")) for t in teacher)
    assert all((", digits " in t["completion"][0]["content"]) == (style in ("digits", "marks")) for t in teacher)
    assert len(teacher) == 2 * len(rows)
    by_id = {r["id"]: r for r in rows}
    for t in teacher:
        sample = by_id[t["id"]]
        n = len(sample["responses"])
        template = protocol.load_template(task.TEMPLATE_SINGLE if n == 1 else task.TEMPLATE)
        # The prompt is exactly what the jobs render for this view order.
        view = t["permutation"]
        assert t["prompt"] == protocol.build_messages(template, sample["context"], [sample["responses"][j] for j in view])
        assert t["messages"] == t["prompt"] + t["completion"]
        parsed = protocol.parse_output(t["completion"][0]["content"], n, template)
        assert parsed.ok, parsed
        assert parsed.principles and parsed.critique
        scores = grm_math.to_original_order(parsed.scores, view)
        assert grm_math.is_correct(scores, sample["labels"])


def test_teacher_permutations_vary():
    rows = task.samples(50, seed=0, split="train")
    views = {tuple(t["permutation"]) for t in task.teacher_rows(rows, seed=0, per_sample=4) if len(t["permutation"]) == 3}
    assert len(views) > 3


def test_questions_rejects_unknown_split_and_style():
    with pytest.raises(ValueError, match="split"):
        next(task.questions(random.Random(0), "validation"))
    with pytest.raises(ValueError, match="style"):
        task.teacher_rows(task.samples(1, seed=0, split="train"), seed=0, style="verbose")


def test_marks_style_marks_every_digit_pair_and_the_verdict_follows_them():
    import re

    rows = task.samples(300, seed=4, split="dev", single_share=0.2)
    for t in task.teacher_rows(rows, seed=4, style="marks"):
        checks = re.findall(r"says (-?\d+), digits ([^A-Z]*?), (right|wrong)\.", t["completion"][0]["content"])
        assert len(checks) == len(t["permutation"])
        answer = int(re.search(r"= (-?\d+)\. ", t["completion"][0]["content"]).group(1))
        for said, pairs, verdict in checks:
            marks = re.findall(r"(\S) (\S) (same|diff)", pairs)
            width = max(len(said), len(str(answer)))
            assert len(marks) == width  # one pair per digit, units first
            assert all((x == y) == (m == "same") for x, y, m in marks)
            assert (verdict == "right") == (int(said) == answer) == all(m == "same" for _, _, m in marks)
