"""Reliability figures against hand-computed values on small constructed runs; the kappas on
textbook examples; the p-values against table values; the balanced planner's slot counts."""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from tribunal.jobs.grm import grm_math as gm
from tribunal.jobs.grm import reliability as rl
from tribunal.jobs.grm import trajectories as tr
from tribunal.jobs.grm.vote_frame import vote_frame
from tribunal.schemas import arrow
from tribunal.schemas import columns as c


def row(sid: str, j: int, perm, scores, labels=None, responses=None) -> dict:
    n = len(perm)
    return {c.ID: sid, c.SAMPLE_INDEX: j, c.HINTED: False, c.N_RESPONSES: n, c.PERMUTATION: list(perm), c.TEXT: "t",
            c.SCORES: None if scores is None else list(scores), c.LABELS: None if labels is None else list(labels),
            c.CONTEXT: [{"role": "user", "content": "q"}], c.RESPONSES: responses or [f"r{i}" for i in range(n)]}


def frame(rows):
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY))


def figures(rows, resamples=0):
    df = frame(rows)
    st = rl.sample_stats(rl.trajectory_picks(df), vote_frame(df, None, 0, "random"))
    return rl.reliability(st, resamples, 0), st


def judge(samples: int, n_choices, k: int, view_scores, orders="random", seed=0, labelled=True) -> list[dict]:
    """Trajectories of a constructed judge: ``view_scores(perm, rng, best)`` gives the scores in
    the order shown (``best``: the sample's labelled best, original index); they are mapped back
    to the original order as ``sample`` does."""
    rng = random.Random(seed)
    rows = []
    for s in range(samples):
        n = n_choices[s % len(n_choices)]
        labels = [1.0 if i == s % n else 0.0 for i in range(n)] if labelled else None
        for spec in tr.plan_trajectories(f"s{s:04d}", n, k, seed, orders):
            scores = gm.to_original_order(view_scores(spec.permutation, rng, s % n), spec.permutation)
            rows.append(row(f"s{s:04d}", spec.sample_index, spec.permutation, scores, labels))
    return rows


def first_slot_judge(perm, rng, best):
    return [9] + [3] * (len(perm) - 1)  # always prefers whatever is shown first


def order_blind_judge(perm, rng, best):
    return [9 if orig == best else 3 for orig in perm]  # always prefers the best, wherever it is shown


def test_a_hand_computed_sample():
    # pairs, orders AB AB BA BA, picks 0 0 0 1 (original index)
    rows = [row("s", 0, (0, 1), [9, 3]), row("s", 1, (0, 1), [8, 2]), row("s", 2, (1, 0), [9, 3]), row("s", 3, (1, 0), [3, 9])]
    f, st = figures(rows)
    # 6 pairs: 2 same-order (AB: agree, BA: disagree), 4 cross-order (2 agree)
    assert (st.pairs[0], st.same_pairs[0], st.same_agree[0], st.agree[0]) == (6, 2, 1, 3)
    assert f["position_consistency"]["value"] == 0.5 and f["flip_rate"]["value"] == 1.0
    assert f["same_order_agreement"]["value"] == 0.5
    # slots shown: 0, 0, 1 (BA shows original 0 second), 0
    assert f["first_slot_rate_pairs"]["value"] == 0.75 and f["first_slot_rate_pairs"]["trajectories"] == 4
    # the vote (totals 29, 17) picks 0: 3 of the 4 decided trajectories agree
    assert f["agreement_with_vote"]["value"] == 0.75
    # Fleiss, one subject: P = 3/6, p = (3/4, 1/4), P_e = 10/16
    assert f["fleiss_kappa"]["value"] == pytest.approx((0.5 - 0.625) / 0.375)


def test_ties_and_parse_failures_are_no_pick():
    rows = [row("s", 0, (0, 1), [5, 5]), row("s", 1, (1, 0), None), row("s", 2, (1, 0), [2, 7]), row("s", 3, (0, 1), [1, 6])]
    f, st = figures(rows)
    assert (st.parsed[0], st.decided[0]) == (3, 2)
    assert f["tie_rate"] == pytest.approx(1 / 3)
    assert f["position_consistency"]["value"] == 1.0 and f["flip_rate"]["value"] == 0.0  # picks 1 and 1 across orders
    assert f["same_order_agreement"]["value"] is None  # no two decided trajectories saw one order


def test_single_responses_make_no_pick_and_empty_chunks_add_nothing():
    rows = [row("one", 0, (0,), [7]), row("one", 1, (0,), [3]), row("two", 0, (0, 1), [9, 3]), row("two", 1, (1, 0), [9, 3])]
    f, st = figures(rows)
    assert f["parsed"] == 2 and f["decided"] == 2 and f["agreement_with_vote"]["samples"] == 1
    assert f["position_consistency"]["value"] == 1.0 and set(f["position_bias"]) == {"2"}
    empty = rl.sample_stats(rl.trajectory_picks(frame([])))
    total = rl.add_sums(rl.add_sums(None, rl.contributions(empty, (2,))), rl.contributions(st, (2,)))
    assert rl.label_free_figures(total)["position_consistency"] == 1.0
    assert rl.label_free_figures(rl.add_sums(None, rl.contributions(empty, (2,))))["first_slot_rate_pairs"] is None


@pytest.mark.parametrize("orders", ["random", "balanced"])
def test_a_judge_that_always_prefers_slot_one(orders):
    f, _ = figures(judge(120, (2, 3, 4), 4, first_slot_judge, orders), resamples=200)
    assert f["first_slot_rate_pairs"]["value"] == 1.0 and f["first_slot_rate_pairs"]["p_value"] < 1e-6
    for n in ("3", "4"):
        assert f["position_bias"][n]["win_rate"][0] == 1.0 and f["position_bias"][n]["p_value"] < 1e-6
    assert f["same_order_agreement"]["value"] == 1.0 and f["position_consistency"]["value"] < 0.3
    pairs, _ = figures(judge(60, (2,), 4, first_slot_judge, orders))
    # two different orders of a pair show different responses first: the pick always flips
    assert pairs["position_consistency"]["value"] == 0.0 and pairs["flip_rate"]["value"] == 1.0


@pytest.mark.parametrize("orders", ["random", "balanced"])
def test_a_judge_that_ignores_order(orders):
    f, _ = figures(judge(400, (2, 3, 4), 4, order_blind_judge, orders, seed=3), resamples=200)
    rate = f["first_slot_rate_pairs"]
    if orders == "balanced":  # every response in every slot equally often: exactly 50%
        assert rate["value"] == 0.5 and rate["p_value"] == pytest.approx(1.0)
        assert f["position_bias"]["4"]["win_rate"] == [0.25] * 4
    else:
        assert abs(rate["value"] - 0.5) < 0.06 and rate["ci95"][0] < 0.5 < rate["ci95"][1] and rate["p_value"] > 0.01
    assert f["position_consistency"]["value"] == 1.0 and f["flip_rate"]["value"] == 0.0
    assert f["agreement_with_vote"]["value"] == 1.0 and f["fleiss_kappa"]["value"] == pytest.approx(1.0)


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as on Wikipedia: 10 subjects, 14 raters, 5 categories: kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert rl.fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-5)
    # the same table as trajectories (picks = categories): the report's kappa is the same
    rows = []
    for s, counts in enumerate(table):
        picks = [cat for cat, m in enumerate(counts) for _ in range(m)]
        for j, p in enumerate(picks):
            rows.append(row(f"s{s}", j, range(5), [9 if i == p else 1 for i in range(5)]))
    f, _ = figures(rows)
    assert f["fleiss_kappa"]["value"] == pytest.approx(0.20993, abs=1e-5)
    assert rl.fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)


def test_cohen_kappa_textbook_examples():
    # Wikipedia: 50 proposals, yes/yes 20, yes/no 5, no/yes 10, no/no 15: p_o = 0.7, p_e = 0.5, kappa = 0.4
    a = [1] * 25 + [0] * 25
    b = [1] * 20 + [0] * 5 + [1] * 10 + [0] * 15
    assert rl.cohen_kappa(a, b) == pytest.approx(0.4)
    # second example: 45/15 vs 25/35 split, p_o = 0.6 ... (a: 60 yes; b: 40 yes; 45 and 25 agree: kappa 0.1304)
    a = [1] * 45 + [1] * 15 + [0] * 25 + [0] * 15
    b = [1] * 45 + [0] * 15 + [0] * 25 + [1] * 15
    p_o, p_e = 0.7, 0.6 * 0.6 + 0.4 * 0.4
    assert rl.cohen_kappa(a, b) == pytest.approx((p_o - p_e) / (1 - p_e))
    assert rl.cohen_kappa([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)


def test_p_values_against_tables():
    for x, df in ((3.841, 1), (5.991, 2), (7.815, 3), (9.488, 4), (11.070, 5), (16.919, 9)):  # 5% critical values
        assert rl.chi_square_sf(x, df) == pytest.approx(0.05, abs=2e-4)
    assert rl.chi_square_sf(6.635, 1) == pytest.approx(0.01, abs=1e-4) and rl.chi_square_sf(0, 3) == 1.0
    stat, p, method = rl.chi_square_uniform([30, 10, 20])
    assert stat == pytest.approx(10.0) and p == pytest.approx(math.exp(-5), rel=1e-3 if "scipy" in method else 1e-9)
    p, method = rl.binomial_p_value(60, 100)
    # exact two-sided 0.0569; the normal approximation with continuity correction gives 0.0574
    assert p == pytest.approx(0.0569 if "exact" in method else 0.0574, abs=5e-4)
    assert rl.binomial_p_value(0, 0) == (None, "none")


def test_expected_calibration_error_by_hand():
    out = rl.ece(np.array([0.05, 0.15, 0.95, 0.95]), np.array([0, 0, 1, 0]), 0, 0)
    assert out["ece"] == pytest.approx((0.05 + 0.15 + 2 * 0.45) / 4)
    assert [d["samples"] for d in out["diagram"]] == [1, 1, 2] and out["diagram"][2]["observed"] == 0.5
    assert rl.ece(np.array([0.0, 1.0, 1.0]), np.array([0, 1, 1]), 0, 0)["ece"] == 0.0


def test_calibration_by_margin_and_single_response():
    rows = [row("a", 0, (0, 1), [9, 1], [1, 0]), row("a", 1, (1, 0), [9, 2], [1, 0]),  # margin (16 - 3) / 2 = 6.5, right
            row("b", 0, (0, 1), [5, 4], [0, 1]), row("b", 1, (1, 0), [6, 6], [0, 1]),  # margin 1 / 2 = 0.5, wrong
            row("c", 0, (0, 1), [7, 7], [1, 0])]  # tie: margin 0
    df = frame(rows)
    v = vote_frame(df, None, 0, "strict")
    st = rl.sample_stats(rl.trajectory_picks(df), v)
    cal = rl.calibration_multi(v, st, 0, 0)
    assert [(b["bin"], b["samples"], b["accuracy"]) for b in cal["by_margin"]] == [("0", 1, 0.0), ("(0, 0.5]", 1, 0.0), ("> 5", 1, 1.0)]
    assert [b["bin"] for b in cal["by_winner_score"]] == ["[5, 6)", "[7, 8)", "[9, 10]"]
    # vote share: a: 2 of 2 decided agree (right), b: 1 of 1 (wrong); c has no decided trajectory
    assert cal["vote_share"]["samples"] == 2 and cal["vote_share"]["ece"] == pytest.approx(0.5)
    single = [row(f"s{i}", 0, (0,), [s], [y]) for i, (s, y) in enumerate([(1, 0), (1, 0), (0, 1), (1, 1)])]
    df = frame(single)
    out = rl.calibration_single(vote_frame(df, None, 0, "random"), 0, 1, 0, 0)
    assert out["labels"] == "binary" and out["ece"] == pytest.approx((abs(1 - 0) + abs(1 / 3 - 1) * 3) / 4)
    assert rl.score_range(df[c.SCORES]) == (0, 1) and rl.score_range(pl.Series([[3, 9], None])) == (1, 10)


def test_spearman_and_length_bias():
    assert rl.spearman(np.array([1, 2, 3, 4, 5]), np.array([5, 6, 7, 8, 7])) == pytest.approx(8 / math.sqrt(95))
    assert rl.spearman(np.array([1, 2, 3]), np.array([1, 1, 1])) is None
    # a judge that scores longer responses higher
    rows = []
    for s in range(30):
        resp = ["x" * (s + 1), "y" * (s + 40)]
        rows.append(row(f"s{s}", 0, (0, 1), [2 + s % 3, 8], [float(s % 2), float(1 - s % 2)], responses=resp))
    df = frame(rows)
    v = vote_frame(df, None, 0, "random")
    lengths = df.group_by(c.ID).agg(pl.col(c.RESPONSES).first().list.eval(pl.element().str.len_chars()).alias(rl.RESPONSE_CHARS))
    lb = rl.length_bias(v, lengths, 100, 0)
    assert lb["overall"]["spearman"] > 0.8 and lb["overall"]["responses"] == 60
    assert set(lb["by_label"]) == {"0", "1"} and lb["overall"]["ci95"][0] > 0.5


def test_compare_two_runs():
    a = [row(f"s{i}", 0, (0, 1), [9, 1] if i < 6 else [1, 9], [1, 0]) for i in range(10)]
    b = [row(f"s{i}", 0, (0, 1), [9, 1] if i < 8 else [1, 9], [1, 0]) for i in range(10)] + [row("extra", 0, (0, 1), [1, 2])]
    va, vb = vote_frame(frame(a), None, 0, "random"), vote_frame(frame(b), None, 0, "random")
    out, dis = rl.compare_votes(va, vb, 100, 0)
    # picks a: 6 x 0, 4 x 1; b: 8 x 0, 2 x 1; agree on 8: p_o = .8, p_e = .6 * .8 + .4 * .2 = .56
    assert out["cohen_kappa"]["value"] == pytest.approx((0.8 - 0.56) / 0.44)
    assert out["common"] == 10 and out["samples_other"] == 11 and out["disagreements"] == 2
    assert dis[c.ID].to_list() == ["s6", "s7"] and dis[c.BEST].to_list() == [1, 1] and dis["other_best"].to_list() == [0, 0]
    assert out["accuracy_this"] == 0.6 and out["accuracy_other"] == 0.8
    assert out["score_spearman"]["value"] == pytest.approx(rl.spearman(
        np.array([9, 1] * 6 + [1, 9] * 4, float), np.array([9, 1] * 8 + [1, 9] * 2, float)))


def test_sums_added_chunk_by_chunk_equal_the_whole():
    rows = judge(60, (2, 3), 4, lambda perm, rng, best: [rng.randint(1, 9) for _ in perm], seed=5)
    df = frame(rows)
    whole = rl.label_free_figures(rl.add_sums(None, rl.contributions(rl.sample_stats(rl.trajectory_picks(df), vote_frame(df, None, 0, "random")), (2,))))
    total = None
    for part in (df.filter(pl.col(c.ID) < "s0030"), df.filter(pl.col(c.ID) >= "s0030")):
        st = rl.sample_stats(rl.trajectory_picks(part), vote_frame(part, None, 0, "random"))
        total = rl.add_sums(total, rl.contributions(st, (2,)))
    assert rl.label_free_figures(total) == pytest.approx(whole)
    f, _ = figures(rows)
    assert whole["position_consistency"] == pytest.approx(f["position_consistency"]["value"])
    assert whole["fleiss_kappa"] == pytest.approx(f["fleiss_kappa"]["value"])


def test_bootstrap_interval_brackets_and_is_seeded():
    f1, _ = figures(judge(200, (2,), 4, lambda perm, rng, best: [rng.randint(1, 9) for _ in perm], seed=2), resamples=300)
    f2, _ = figures(judge(200, (2,), 4, lambda perm, rng, best: [rng.randint(1, 9) for _ in perm], seed=2), resamples=300)
    for key in ("position_consistency", "agreement_with_vote", "fleiss_kappa"):
        lo, hi = f1[key]["ci95"]
        assert lo < f1[key]["value"] < hi and f1[key]["ci95"] == f2[key]["ci95"]


# ------------------------------------------------------------------------ balanced orders


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8, 16])
def test_balanced_orders_fill_every_slot_as_evenly_as_k_allows(n, k):
    specs = tr.plan_trajectories("sample-x", n, k, 11, "balanced")
    assert [s.sample_index for s in specs] == list(range(k))
    assert all(sorted(s.permutation) == list(range(n)) for s in specs)
    for prefix in range(1, k + 1):  # every prefix too: voting at a smaller k stays balanced
        slots = Counter((orig, pos) for s in specs[:prefix] for pos, orig in enumerate(s.permutation))
        counts = [slots[(i, p)] for i in range(n) for p in range(n)]
        assert min(counts) >= prefix // n and max(counts) <= -(-prefix // n), (prefix, slots)
    # seeded, the random planner's first order, and grouped into one request per distinct order
    assert specs == tr.plan_trajectories("sample-x", n, k, 11, "balanced")
    assert specs[0] == tr.plan_trajectories("sample-x", n, k, 11)[0]
    groups = tr.group_specs(specs)
    assert sum(len(g) for g in groups) == k and len({g[0].permutation for g in groups}) == len(groups)


def test_balanced_pairs_are_half_each_way_and_vary_by_sample():
    for k in (2, 4, 8, 32):
        for sid in ("a", "b", "c"):
            ways = Counter(s.permutation for s in tr.plan_trajectories(sid, 2, k, 0, "balanced"))
            assert ways == {(0, 1): k // 2, (1, 0): k // 2}
    firsts = {tr.plan_trajectories(f"s{i}", 3, 3, 0, "balanced")[0].permutation for i in range(40)}
    assert len(firsts) == 6  # the base order is drawn per sample
    assert tr.plan_trajectories("a", 4, 8, 0, "balanced") != tr.plan_trajectories("a", 4, 8, 1, "balanced")
    with pytest.raises(ValueError, match="orders"):
        tr.plan_trajectories("a", 2, 2, 0, "sorted")


def test_sample_config_orders_reach_the_generate_stage_and_the_settings(tmp_path):
    from tribunal.jobs.pipeline.outputs import OutputDir
    from tribunal.jobs.sample import SampleConfig, build_stages
    from tribunal.training.toy import recipe

    model = str(recipe.COMMITTED / "toy-grm")
    cfg = SampleConfig(input="in.parquet", output="out", model=model, orders="balanced")
    assert cfg.settings()["orders"] == "balanced"
    assert "orders" not in SampleConfig(input="in.parquet", output="out", model=model).settings()  # old outputs still resume
    generate = next(p for p in build_stages(cfg, OutputDir(str(tmp_path / "out")), frozenset()) if p.name == "generate")
    assert generate.kwargs["fn_constructor_kwargs"]["orders"] == "balanced"
    with pytest.raises(ValueError, match="'orders'"):
        SampleConfig(input="in.parquet", output="out", model=model, orders="sorted")
