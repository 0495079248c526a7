"""eval: metrics agree with the pure functions; scaling curves, RewardBench sections, report and plot."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT
from tribunal.jobs import eval as ev
from tribunal.jobs.grm import grm_math as gm
from tribunal.jobs.grm.metrics import REWARDBENCH_EXAMPLE_COUNTS, rewardbench_scores
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError


def judge_rows(samples: int, k: int, p_right: float, seed: int = 0, with_meta: bool = False, n_choices=(2, 2, 3)) -> list[dict]:
    """Trajectories of a noisy judge: each one scores the labelled-best response highest with
    probability ``p_right`` (else a random other one), 10% parse failures; the meta score is
    higher on correct trajectories, with noise."""
    rng = random.Random(seed)
    rows = []
    for s in range(samples):
        n = rng.choice(n_choices)
        labels = [0.0] * n
        best = rng.randrange(n)
        labels[best] = 1.0
        for j in range(k):
            fail = rng.random() < 0.1
            pick = best if rng.random() < p_right else rng.choice([i for i in range(n) if i != best])
            scores = None if fail else [8 if i == pick else rng.randint(3, 6) for i in range(n)]
            row = {
                c.ID: f"s{s:04d}", c.SAMPLE_INDEX: j, c.HINTED: False, c.N_RESPONSES: n, c.PERMUTATION: list(range(n)),
                c.TEXT: "t", c.SCORES: scores, c.PARSE_ERROR: "no_scores" if fail else None, c.LABELS: labels,
                c.CONTEXT: [{"role": "user", "content": f"q{s}"}], c.RESPONSES: [f"r{i}" for i in range(n)],
            }
            if with_meta:
                right = scores is not None and gm.is_correct(scores, labels)
                row["meta_score"] = min(1.0, max(0.0, (0.7 if right else 0.3) + rng.gauss(0, 0.2)))
            rows.append(row)
    return rows


def write(path, rows, meta=False):
    schema = arrow.TRAJECTORY
    if meta:
        schema = schema.append(pa.field("meta_score", pa.float64()))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path / "part-0.parquet")
    return str(path)


def test_accuracy_equals_the_pure_vote_and_credit(tmp_path):
    rows = judge_rows(60, 4, p_right=0.6, seed=1)
    out = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "r"), ks="1,3", bootstrap=0))
    for k in (1, 3):
        by_id: dict[str, list] = {}
        for r in rows:
            if r[c.SAMPLE_INDEX] < k:
                by_id.setdefault(r[c.ID], []).append(r)
        for tie in gm.TIE_PROTOCOLS:
            credits = []
            for sid, rs in by_id.items():
                v = gm.vote([r[c.SCORES] for r in rs], rs[0][c.N_RESPONSES], sid, 0)
                credits.append(gm.vote_credit(v.best, v.tied, v.totals, rs[0][c.LABELS], tie))
            assert out["curves"]["voting"][k][f"accuracy_{tie}"] == pytest.approx(sum(credits) / len(credits))
        failures = sum(1 for r in rows if r[c.SAMPLE_INDEX] < k and r[c.SCORES] is None)
        assert out["curves"]["voting"][k]["parse_failure_rate"] == pytest.approx(failures / (60 * k))


def test_scaling_curves_grow_with_k_and_metarm_helps(tmp_path):
    rows = judge_rows(400, 16, p_right=0.6, seed=2, with_meta=True)
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows, meta=True), output=str(tmp_path / "r"), bootstrap=200))
    voting, meta = res["curves"]["voting"], res["curves"]["metarm"]
    assert list(voting) == [1, 2, 4, 8, 16]
    assert voting[8]["accuracy_random"] > voting[1]["accuracy_random"] + 0.05
    assert meta[8]["k_meta"] == 4 and meta[8]["accuracy_random"] >= voting[8]["accuracy_random"]
    lo, hi = voting[8]["ci95_random"]
    assert lo < voting[8]["accuracy_random"] < hi and hi - lo < 0.2
    assert voting[1]["best_of_n_samples"] > 0 and voting[16]["best_of_n_accuracy"] is not None
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Voting@k" in report and "## MetaRM voting@k" in report
    png = (tmp_path / "r" / "scaling.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["curves"]["voting"]["8"]["accuracy_random"] == voting[8]["accuracy_random"]


def test_single_response_roc_auc(tmp_path):
    rows = []
    rng = random.Random(3)
    for s in range(80):
        good = s % 2 == 0
        for j in range(3):
            score = rng.randint(6, 10) if good else rng.randint(1, 7)
            rows.append({c.ID: f"s{s}", c.SAMPLE_INDEX: j, c.HINTED: False, c.N_RESPONSES: 1, c.PERMUTATION: [0], c.TEXT: "t",
                         c.SCORES: [score], c.LABELS: [1.0 if good else 0.0], c.CONTEXT: [{"role": "user", "content": "q"}], c.RESPONSES: ["r"]})
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "r"), ks="3", bootstrap=0))
    m = res["curves"]["voting"][3]
    means = {}
    for r in rows:
        means.setdefault(r[c.ID], []).append(r[c.SCORES][0])
    expected = gm.roc_auc([sum(v) / 3 for v in means.values()], [int(s[1:]) % 2 == 0 for s in means])
    assert m["roc_auc_single"] == pytest.approx(expected) and m["single_samples"] == 80 and m["judged"] == 0


def test_rewardbench_sections_match_a_hand_computation():
    acc = {"alpacaeval-easy": 1.0, "mt-bench-easy": 0.5, "llmbar-natural": 0.8, "refusals-dangerous": 0.6, "math-prm": 0.5, "hep-go": 1.0, "other": 0.0}
    s = rewardbench_scores(acc)
    assert s["Chat"] == pytest.approx((1.0 * 100 + 0.5 * 28) / 128)
    assert s["Chat Hard"] == pytest.approx(0.8) and s["Safety"] == pytest.approx(0.6)
    assert s["Reasoning"] == pytest.approx((0.5 * 984 + 1.0 * 164) / (984 + 164))  # math-prm weighs 984, as RewardBench's code
    assert s["Overall"] == pytest.approx((s["Chat"] + s["Chat Hard"] + s["Safety"] + s["Reasoning"]) / 4)
    assert rewardbench_scores({"chat": 1.0}) is None
    partial = rewardbench_scores({"alpacaeval-easy": 1.0})
    assert partial["Chat"] == 1.0 and partial["Safety"] is None and partial["Overall"] is None
    assert sum(REWARDBENCH_EXAMPLE_COUNTS.values()) == 3522  # the leaderboard's weights, unchanged


def test_subsets_from_samples_give_section_scores(tmp_path):
    rows = judge_rows(40, 2, p_right=0.8, seed=4, n_choices=(2,))
    subsets = ["alpacaeval-easy", "llmbar-natural", "refusals-dangerous", "math-prm"]
    samples = pa.table({c.ID: [f"s{s:04d}" for s in range(40)], "subset": [subsets[s % 4] for s in range(40)]})
    pq.write_table(samples, tmp_path / "samples.parquet")
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "r"), samples=str(tmp_path / "samples.parquet"), bootstrap=0))
    assert set(res["subsets"]) == set(subsets) and all(m["samples"] == 10 for m in res["subsets"].values())
    assert res["rewardbench"]["Chat"] == pytest.approx(res["subsets"]["alpacaeval-easy"]["accuracy"])
    assert res["rewardbench"]["Overall"] == pytest.approx(sum(res["subsets"][s]["accuracy"] for s in subsets) / 4)


def test_unlabelled_input_gets_the_label_free_figures_and_bad_samples_fail_with_one_line(tmp_path, capsys):
    rows = judge_rows(5, 2, 0.5)
    for r in rows:
        r[c.LABELS] = None
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "u")))
    err = capsys.readouterr().err
    assert "no labels: accuracy, calibration and the scaling plot need them" in err and "Voting@" not in err
    assert res["reliability"]["agreement_with_vote"]["value"] is not None and "calibration" not in res["reliability"]
    assert res["plot"] is None and not (tmp_path / "u" / "scaling.png").exists()
    pq.write_table(pa.table({c.ID: ["x"]}), tmp_path / "s.parquet")
    good = write(tmp_path / "g", judge_rows(5, 2, 0.5))
    with pytest.raises(TribunalError, match="'subset'"):
        ev.run(ev.EvalConfig(input=good, output=str(tmp_path / "r"), samples=str(tmp_path / "s.parquet")))
    r = subprocess.run([sys.executable, "-m", "tribunal.jobs.cli", "eval", "--input", good, "--output", str(tmp_path / "r"), "--ks", "0,x"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "ks" in r.stderr


def test_bootstrap_interval_is_seeded_and_brackets_the_mean():
    vals = [1.0] * 70 + [0.0] * 30
    a = ev.bootstrap_interval(vals, 500, seed=1)
    assert a == ev.bootstrap_interval(vals, 500, seed=1)
    assert a[0] < 0.7 < a[1] and math.isclose(a[1] - a[0], 2 * 1.96 * math.sqrt(0.21 / 100), rel_tol=0.25)
    assert ev.bootstrap_interval(vals, 0, seed=1) is None


def test_console_has_greedy_one_parse_failure_figure_and_rewardbench_coverage(tmp_path):
    """The console says what report.md says: greedy accuracy, one parse-failure figure (every
    trajectory read; the per-k rates are labelled as of the first k), and RewardBench's Overall with
    how many of its 23 subsets it covers (console, report.md and metrics.json)."""
    import io

    rows = judge_rows(40, 4, p_right=0.8, seed=4, n_choices=(2,))
    subsets = ["alpacaeval-easy", "llmbar-natural", "refusals-dangerous", "math-prm"]
    pq.write_table(pa.table({c.ID: [f"s{s:04d}" for s in range(40)], "subset": [subsets[s % 4] for s in range(40)]}), tmp_path / "samples.parquet")
    greedy = write(tmp_path / "g", judge_rows(40, 1, p_right=0.9, seed=5, n_choices=(2,)))
    err = io.StringIO()
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "r"), samples=str(tmp_path / "samples.parquet"),
                               greedy=greedy, bootstrap=0), stream=err)
    lines = err.getvalue().splitlines()
    failures = sum(r[c.SCORES] is None for r in rows)
    figure = f"parse failures: {100 * failures / 160:.1f}% of 160 trajectories (no_scores {failures})"
    assert [line for line in lines if "parse failures" in line] == [f"[eval] {figure}"], lines
    assert f"[eval] greedy (temperature 0): accuracy {100 * res['greedy']['accuracy_random']:.1f}%" in err.getvalue()
    overall = f"Overall {100 * res['rewardbench']['Overall']:.1f} (4 of 23 subsets: partial)"
    assert any(line.startswith("[eval] RewardBench: ") and line.endswith(overall) for line in lines), lines
    report = (tmp_path / "r" / "report.md").read_text()
    assert f"| Overall | {100 * res['rewardbench']['Overall']:.1f} (4 of 23 subsets: partial) |" in report
    assert "parse failures (of the first k)" in report and figure[1:] in report
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["rewardbench_coverage"]["text"] == "4 of 23 subsets: partial" and saved["rewardbench_coverage"]["partial"] is True
    assert saved["parse_failures"]["failures"] == failures and saved["parse_failures"]["trajectories"] == 160
    manifest = json.loads((tmp_path / "r" / "_manifest.json").read_text())
    assert manifest["counts"]["rows_in"] == 40 == manifest["counts"]["rows_out"] and manifest["counts"]["reconciled"]


# ------------------------------------------------------------------------ reliability


def biased_rows(samples: int, k: int, p_first: float, seed: int = 0, n_choices=(2, 2, 3, 4), orders: str = "random", labelled: bool = True) -> list[dict]:
    """Trajectories of a judge that picks the response shown first with probability ``p_first``,
    else the labelled best (scores mapped back to the original order as `sample` does)."""
    from tribunal.jobs.grm import trajectories as tr

    rng = random.Random(seed)
    rows = []
    for s in range(samples):
        n = n_choices[s % len(n_choices)]
        best = rng.randrange(n)
        labels = [1.0 if i == best else 0.0 for i in range(n)]
        for spec in tr.plan_trajectories(f"s{s:04d}", n, k, seed, orders):
            shown = spec.permutation[0] if rng.random() < p_first else best
            scores = [9 if i == shown else rng.randint(2, 5) for i in range(n)]
            rows.append({
                c.ID: f"s{s:04d}", c.SAMPLE_INDEX: spec.sample_index, c.HINTED: False, c.N_RESPONSES: n, c.PERMUTATION: list(spec.permutation),
                c.TEXT: "t", c.SCORES: scores, c.LABELS: labels if labelled else None, c.CONTEXT: [{"role": "user", "content": f"q{s}"}],
                c.RESPONSES: ["x" * (10 + 5 * i) for i in range(n)],
            })
    return rows


def test_reliability_in_metrics_report_console_and_plots(tmp_path, capsys):
    from tribunal.jobs.grm import reliability as rl
    from tribunal.jobs.grm.vote_frame import vote_frame
    import polars as pl

    rows = biased_rows(80, 4, p_first=0.3, seed=7)
    subsets = pa.table({c.ID: [f"s{s:04d}" for s in range(80)], "subset": ["a" if s % 2 else "b" for s in range(80)]})
    pq.write_table(subsets, tmp_path / "samples.parquet")
    res = ev.run(ev.EvalConfig(input=write(tmp_path / "t", rows), output=str(tmp_path / "r"), ks="1,4", bootstrap=50, samples=str(tmp_path / "samples.parquet")))
    rel = res["reliability"]
    for key in ("position_consistency", "flip_rate", "same_order_agreement", "agreement_with_vote", "fleiss_kappa"):
        assert set(rel[key]) == {"value", "ci95", "samples"} and rel[key]["value"] is not None and len(rel[key]["ci95"]) == 2, key
    assert set(rel["position_bias"]) == {"2", "3", "4"} and rel["first_slot_rate_pairs"]["value"] > 0.55
    assert set(rel["calibration"]) >= {"multi", "single", "score_range"} and rel["calibration"]["multi"]["vote_share"]["ece"] is not None
    assert rel["length_bias"]["overall"]["responses"] == sum(2 if s % 4 < 2 else 3 if s % 4 == 2 else 4 for s in range(80))
    assert set(rel["accuracy_by_best_slot"]) == {"2", "3", "4"}
    assert set(res["reliability_subsets"]) == {"a", "b"} and res["reliability_subsets"]["a"]["samples"] == 40
    # the job's figures are the pure functions' on the same trajectories
    df = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY))
    pure = rl.reliability(rl.sample_stats(rl.trajectory_picks(df), vote_frame(df, None, 0, "random")), 0, 0)
    for key in ("position_consistency", "flip_rate", "agreement_with_vote", "fleiss_kappa"):
        assert rel[key]["value"] == pytest.approx(pure[key]["value"])
    saved = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert saved["reliability"]["position_consistency"]["value"] == pytest.approx(rel["position_consistency"]["value"])
    report = (tmp_path / "r" / "report.md").read_text()
    for section in ("## Reliability of the judge", "### Position bias by displayed slot", "### Calibration", "### Length bias", "### Reliability per subset",
                    "![position bias](position_bias.png)", "![reliability diagram](reliability.png)", "![accuracy by vote margin](margin.png)"):
        assert section in report, section
    for png in ("position_bias.png", "reliability.png", "margin.png"):
        assert (tmp_path / "r" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert "[eval] position consistency " in err and "[eval] position bias: the first slot wins " in err and "[eval] self-consistency: " in err
    manifest = json.loads((tmp_path / "r" / "_manifest.json").read_text())
    assert manifest["plots"]["position_bias"].endswith("position_bias.png") and manifest["counts"]["reconciled"]


def test_eval_sees_a_first_slot_judge_and_balanced_orders_cancel_it(tmp_path):
    biased = ev.run(ev.EvalConfig(input=write(tmp_path / "b", biased_rows(60, 4, p_first=1.0, n_choices=(2,))), output=str(tmp_path / "rb"), bootstrap=0))
    first = biased["reliability"]["first_slot_rate_pairs"]
    assert first["value"] == 1.0 and first["p_value"] < 1e-6
    assert biased["reliability"]["position_consistency"]["value"] == 0.0 and biased["reliability"]["flip_rate"]["value"] == 1.0
    fair = ev.run(ev.EvalConfig(input=write(tmp_path / "f", biased_rows(60, 4, p_first=0.0, n_choices=(2,), orders="balanced")), output=str(tmp_path / "rf"), bootstrap=0))
    assert fair["reliability"]["first_slot_rate_pairs"]["value"] == 0.5 and fair["reliability"]["position_consistency"]["value"] == 1.0
    # over balanced orders a pure first-slot judge picks each response of a pair exactly half the time
    balanced = ev.run(ev.EvalConfig(input=write(tmp_path / "bb", biased_rows(60, 4, p_first=1.0, n_choices=(2,), orders="balanced")), output=str(tmp_path / "rbb"), bootstrap=0))
    assert balanced["reliability"]["first_slot_rate_pairs"]["value"] == 1.0 and balanced["reliability"]["agreement_with_vote"]["value"] == 0.5


def test_compare_two_runs_writes_the_disagreements(tmp_path, capsys):
    import polars as pl

    this = write(tmp_path / "a", biased_rows(50, 3, p_first=0.2, seed=1))
    other = write(tmp_path / "b", biased_rows(50, 3, p_first=0.6, seed=1, labelled=False))
    res = ev.run(ev.EvalConfig(input=this, output=str(tmp_path / "r"), compare=other, bootstrap=50))
    cmp_ = res["compare"]
    dis = pq.read_table(tmp_path / "r" / ev.DISAGREEMENTS_FILE)
    assert dis.schema.equals(ev.disagreements_schema()) and dis.num_rows == cmp_["disagreements"] > 0
    d = pl.from_arrow(dis)
    assert (d[c.BEST] != d["other_best"]).all() and d[c.LABELS].is_not_null().all() and d["other_correct"].is_null().all()
    assert cmp_["common"] == 50 and 0 < cmp_["cohen_kappa"]["value"] < 1 and cmp_["score_spearman"]["value"] is not None
    assert cmp_["agreement"]["value"] == pytest.approx(1 - cmp_["disagreements"] / 50)
    assert "accuracy_this" not in cmp_  # the other run has no labels
    assert f"[eval] agreement with {other}: same pick " in capsys.readouterr().err
    assert f"## Agreement with `{other}`" in (tmp_path / "r" / "report.md").read_text()
    assert json.loads((tmp_path / "r" / "_manifest.json").read_text())["settings"]["compare"] == other
