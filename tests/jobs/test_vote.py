"""vote job: the vectorised polars vote agrees with the pure functions, row for row."""

import json
import random

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tribunal.jobs.grm import grm_math as gm
from tribunal.jobs import vote
from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError


def synthetic_trajectories(samples: int, k: int, seed: int = 0, fail_rate: float = 0.2) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for s in range(samples):
        n = rng.choice([1, 2, 2, 3, 4])
        labels = [0.0] * n
        labels[rng.randrange(n)] = 1.0
        for j in rng.sample(range(k), k):  # shuffled order: vote must sort by sample_index
            ok = rng.random() > fail_rate
            rows.append({
                c.ID: f"s{s:05d}", c.SAMPLE_INDEX: j, c.HINTED: False, c.N_RESPONSES: n,
                c.PERMUTATION: list(range(n)), c.TEXT: "t",
                c.SCORES: [rng.randint(1, 3) for _ in range(n)] if ok else None,
                c.PARSE_ERROR: None if ok else "no_scores", c.LABELS: labels,
                c.CONTEXT: [{"role": "user", "content": f"q{s}"}], c.RESPONSES: [f"r{i}" for i in range(n)],
            })
        if rng.random() < 0.3:  # hinted rows never vote
            rows.append({c.ID: f"s{s:05d}", c.SAMPLE_INDEX: 0, c.HINTED: True, c.N_RESPONSES: n,
                         c.PERMUTATION: list(range(n)), c.TEXT: "h", c.SCORES: [10] * n, c.LABELS: labels,
                         c.CONTEXT: [{"role": "user", "content": f"q{s}"}], c.RESPONSES: [f"r{i}" for i in range(n)]})
    return rows


def reference(rows, k, seed, tie):
    by_id = {}
    for r in rows:
        if not r[c.HINTED]:
            by_id.setdefault(r[c.ID], []).append(r)
    out = {}
    for sid, rs in by_id.items():
        rs.sort(key=lambda r: r[c.SAMPLE_INDEX])
        rs = rs[:k] if k else rs
        n = rs[0][c.N_RESPONSES]
        v = gm.vote([r[c.SCORES] for r in rs], n, sid, seed)
        labels = rs[0][c.LABELS]
        credit = gm.vote_credit(v.best, v.tied, v.totals, labels, tie) if n >= 2 else None
        correct = (v.best == gm.unique_argmax(labels)) if n >= 2 else None
        out[sid] = (list(v.totals) if v.totals else None, v.best, v.tied, v.valid, v.k, correct, credit)
    return out


@pytest.mark.parametrize("tie", ["random", "half", "strict"])
@pytest.mark.parametrize("k", [None, 1, 3])
def test_vote_frame_matches_pure_functions(tie, k):
    rows = synthetic_trajectories(300, 5, seed=hash((tie, k)) % 1000)
    df = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY))
    got = vote.vote_frame(df, k, seed=3, tie=tie)
    ref = reference(rows, k, 3, tie)
    assert len(got) == len(ref)
    for r in got.iter_rows(named=True):
        assert (r[c.TOTALS], r[c.BEST], r[c.TIED], r[c.VALID], r[c.K], r[c.CORRECT], r[c.CREDIT]) == ref[r[c.ID]], r[c.ID]


def write_shards(tmp_path, rows, per_shard_samples=50):
    d = tmp_path / "traj"
    d.mkdir()
    ids = sorted({r[c.ID] for r in rows})
    for i in range(0, len(ids), per_shard_samples):
        chunk = set(ids[i : i + per_shard_samples])
        pq.write_table(pa.Table.from_pylist([r for r in rows if r[c.ID] in chunk], schema=arrow.TRAJECTORY), d / f"part-{i:05d}.parquet")
    return d


def test_vote_job_writes_schema_checked_shards_and_manifest(tmp_path):
    rows = synthetic_trajectories(200, 4)
    d = write_shards(tmp_path, rows)
    cfg = vote.VoteConfig(input=str(d), output=str(tmp_path / "votes"), k=4, chunk_rows=300)
    manifest = vote.run(cfg)
    parts = sorted((tmp_path / "votes").glob("part-*.parquet"))
    assert len(parts) > 1  # chunked
    table = pa.concat_tables(pq.read_table(p) for p in parts)
    assert table.schema.equals(arrow.VOTE)
    assert table.num_rows == 200 == manifest["counts"]["samples"]
    ref = reference(rows, 4, 0, "random")
    judged = [v for v in ref.values() if v[6] is not None]
    assert manifest["counts"]["accuracy"] == pytest.approx(sum(v[6] for v in judged) / len(judged))
    failures = sum(1 for r in rows if not r[c.HINTED] and r[c.SCORES] is None)
    assert manifest["counts"]["parse_failure_rate"] == pytest.approx(failures / 800)
    on_disk = json.loads((tmp_path / "votes" / "_manifest.json").read_text())
    assert on_disk["counts"] == manifest["counts"]


def test_vote_rejects_non_trajectory_input(tmp_path):
    pq.write_table(pa.table({"id": ["a"], "responses": [["x"]]}), tmp_path / "x.parquet")
    with pytest.raises(TribunalError, match=r"x\.parquet: no 'sample_index' column"):
        vote.run(vote.VoteConfig(input=str(tmp_path / "x.parquet"), output=str(tmp_path / "v")))


def test_vote_refuses_samples_split_across_chunks(tmp_path):
    rows = synthetic_trajectories(4, 2)
    d = tmp_path / "traj"
    d.mkdir()
    # the first sample's two non-hinted trajectories land in different files
    pq.write_table(pa.Table.from_pylist(rows[:1], schema=arrow.TRAJECTORY), d / "part-a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[1:], schema=arrow.TRAJECTORY), d / "part-b.parquet")
    with pytest.raises(TribunalError, match="more than one chunk"):
        vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "v"), chunk_rows=1))


def test_seen_ids_finds_an_id_of_an_earlier_chunk():
    import polars as pl

    from tribunal.jobs.pipeline.outputs import SeenIds

    seen = SeenIds()
    assert seen.add(pl.Series([f"s{i}" for i in range(0, 1000, 2)])) is None
    assert seen.add(pl.Series([f"s{i}" for i in range(1, 1000, 2)])) is None
    assert seen.add(pl.Series(["t1", "s0", "t2"])) == "s0"
    assert seen.add(pl.Series(["t3", "s999"])) == "s999"
    assert seen.add(pl.Series(["t1", "t2", "t3"])) is None  # the refused chunks were not recorded


# --- meta-RM guided voting (SPEC section 5) -------------------------------------------------------

def test_meta_select_by_hand():
    # scores 0.9, 0.2, 0.9, None, 0.5: top-2 are positions 0 and 2 (tie 0.9: both), top-3 adds 4,
    # a tie at the cut goes to the lower index, an unscored trajectory ranks last
    assert gm.meta_select([0.9, 0.2, 0.9, None, 0.5], 2) == [0, 2]
    assert gm.meta_select([0.9, 0.2, 0.9, None, 0.5], 3) == [0, 2, 4]
    assert gm.meta_select([0.3, 0.7, 0.7, 0.7], 2) == [1, 2]
    assert gm.meta_select([None, 0.1], 1) == [1]
    assert [gm.default_k_meta(k) for k in (1, 2, 3, 8, 9)] == [1, 1, 2, 4, 5]


def test_guided_vote_against_a_hand_computation(tmp_path):
    def traj(j, scores, meta, hinted=False):
        return {c.ID: "a", c.SAMPLE_INDEX: j, c.HINTED: hinted, c.N_RESPONSES: 2, c.PERMUTATION: [0, 1], c.TEXT: "t",
                c.SCORES: scores, c.PARSE_ERROR: None if scores else "no_scores", c.LABELS: [1.0, 0.0],
                c.CONTEXT: [{"role": "user", "content": "q"}], c.RESPONSES: ["r0", "r1"], c.META_SCORE: meta}

    rows = [
        traj(3, [2, 9], 0.95),  # confident but wrong ...
        traj(0, [8, 3], 0.90),
        traj(1, [1, 9], 0.10),  # low meta score: left out
        traj(2, [7, 4], 0.90),  # ties 0.90 with j=0
        traj(4, None, 0.99),  # a parse failure can be kept but does not vote
        traj(0, [10, 1], 0.99, hinted=True),  # hinted never votes
    ]
    # plain voting, k=4 (j = 0..3): totals [18, 25] -> response 1, wrong
    # guided, k=4, k_meta=2: keep j=3 (0.95) and j=0 (0.90 ties j=2; lower index wins) -> [10, 12] -> 1
    # guided, k=4, default k_meta=2: the same; k_meta=3 adds j=2 -> [17, 16] -> response 0, correct
    # guided, k=5, k_meta=2: j=4 (0.99, no scores) and j=3 -> [2, 9], one valid voter
    d = tmp_path / "traj"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY_SCORED), d / "part-0.parquet")
    df = pl.read_parquet(d / "part-0.parquet")
    plain = vote.vote_frame(df, 4, 0, "random").row(0, named=True)
    assert plain[c.TOTALS] == [18, 25] and plain[c.BEST] == 1 and plain[c.K] == 4
    g2 = vote.vote_frame(df, 4, 0, "random", guided=True, k_meta=2).row(0, named=True)
    assert g2[c.TOTALS] == [10, 12] and g2[c.K] == 2 and g2[c.VALID] == 2
    assert vote.vote_frame(df, 4, 0, "random", guided=True).row(0, named=True)[c.TOTALS] == [10, 12]  # ceil(4/2)
    g3 = vote.vote_frame(df, 4, 0, "random", guided=True, k_meta=3).row(0, named=True)
    assert g3[c.TOTALS] == [17, 16] and g3[c.BEST] == 0 and g3[c.CORRECT] is True
    g5 = vote.vote_frame(df, 5, 0, "random", guided=True, k_meta=2).row(0, named=True)
    assert g5[c.TOTALS] == [2, 9] and g5[c.K] == 2 and g5[c.VALID] == 1
    # the job: guided by default when meta scores are present, recorded in the manifest
    m = vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "v"), k=4, k_meta=3))
    assert m["counts"]["guided"] is True and m["counts"]["k_meta"] == 3 and m["counts"]["correct"] == 1
    m = vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "v2"), k=4, meta="off"))
    assert m["counts"]["guided"] is False and m["counts"]["correct"] == 0


def test_guided_vote_matches_meta_select(tmp_path):
    rows = synthetic_trajectories(200, 6, seed=7)
    rng = random.Random(1)
    for r in rows:
        r[c.META_SCORE] = rng.choice([None, 0.1, 0.5, 0.5, 0.9, rng.random()])
    df = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY_SCORED))
    got = {r[c.ID]: r for r in vote.vote_frame(df, 5, 2, "random", guided=True, k_meta=3).iter_rows(named=True)}
    by_id = {}
    for r in rows:
        if not r[c.HINTED] and r[c.SAMPLE_INDEX] < 5:
            by_id.setdefault(r[c.ID], []).append(r)
    for sid, rs in by_id.items():
        rs.sort(key=lambda r: r[c.SAMPLE_INDEX])
        kept = [rs[i] for i in gm.meta_select([r[c.META_SCORE] for r in rs], 3)]
        v = gm.vote([r[c.SCORES] for r in kept], rs[0][c.N_RESPONSES], sid, 2)
        assert (got[sid][c.TOTALS], got[sid][c.BEST], got[sid][c.VALID]) == (list(v.totals) if v.totals else None, v.best, v.valid), sid


def test_k_meta_needs_meta_scores(tmp_path):
    d = write_shards(tmp_path, synthetic_trajectories(10, 2))
    with pytest.raises(TribunalError, match="no 'meta_score' column"):
        vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "v"), k=2, k_meta=1))


def test_vote_refuses_another_k_into_the_same_output_and_overwrite_replaces_it(tmp_path, capsys):
    """A vote output voted with --k 1 is not silently replaced by a run with --k 4: refused in one
    line, then replaced with --overwrite (a flag, like sample's); the same settings recompute."""
    from tribunal.jobs.cli import run_main

    d = write_shards(tmp_path, synthetic_trajectories(30, 4))
    out = tmp_path / "votes"

    def ks() -> set[int]:
        return set(pa.concat_tables(pq.read_table(p) for p in out.glob("part-*.parquet"))[c.K].to_pylist())

    assert run_main("vote", ["--input", str(d), "--output", str(out), "--k", "1"]) == 0
    assert run_main("vote", ["--input", str(d), "--output", str(out), "--k", "1"]) == 0 and ks() == {1}
    capsys.readouterr()
    assert run_main("vote", ["--input", str(d), "--output", str(out), "--k", "4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "holds a run with k=1, this one has k=4" in err[0] and "--overwrite" in err[0], err
    assert ks() == {1}
    assert run_main("vote", ["--input", str(d), "--output", str(out), "--k", "4", "--overwrite"]) == 0
    assert ks() == {4}
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["settings"]["k"] == 4 and manifest["counts"]["reconciled"] and manifest["counts"]["rows_out"] == 30


def test_guided_vote_parse_failures_are_over_every_trajectory_considered(tmp_path):
    """One parse-failure figure: with meta-RM guided voting, the share of failures among all k
    trajectories considered (what `sample` reported), not among the k_meta kept (where a meta-RM
    that ranks failures low would hide them)."""
    rows = synthetic_trajectories(100, 4, seed=9, fail_rate=0.3)
    for r in rows:
        r[c.META_SCORE] = 0.1 if r[c.SCORES] is None else 0.9
    d = tmp_path / "traj"
    d.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY_SCORED), d / "part-0.parquet")
    considered = [r for r in rows if not r[c.HINTED]]
    failures = sum(r[c.SCORES] is None for r in considered)
    import io

    err = io.StringIO()
    m = vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "v"), k=4, k_meta=2), stream=err)
    counts = m["counts"]
    assert counts["guided"] and counts["trajectories_considered"] == len(considered) == 400
    assert counts["parse_failures"] == failures and counts["parse_failure_rate"] == pytest.approx(failures / 400)
    assert counts["trajectories_voted"] == 200 and counts["valid_voters"] > 200 - failures  # the meta-RM kept the parsed ones
    assert f"parse failures: {100 * failures / 400:.1f}% of 400 trajectories" in err.getvalue()


def test_vote_manifest_and_console_carry_the_label_free_reliability_figures(tmp_path, capsys):
    """Added up chunk by chunk, the figures equal the pure functions' on the whole input."""
    from tribunal.jobs.grm import reliability as rl
    from tribunal.jobs.grm import trajectories as tr

    rng = random.Random(5)
    rows = []
    for s in range(120):
        n = (2, 3)[s % 2]
        for spec in tr.plan_trajectories(f"s{s:05d}", n, 4, 0):
            ok = rng.random() > 0.1
            rows.append({c.ID: f"s{s:05d}", c.SAMPLE_INDEX: spec.sample_index, c.HINTED: False, c.N_RESPONSES: n, c.PERMUTATION: list(spec.permutation),
                         c.TEXT: "t", c.SCORES: [rng.randint(1, 9) for _ in range(n)] if ok else None, c.LABELS: None,
                         c.CONTEXT: [{"role": "user", "content": "q"}], c.RESPONSES: [f"r{i}" for i in range(n)]})
    d = write_shards(tmp_path, rows)
    manifest = vote.run(vote.VoteConfig(input=str(d), output=str(tmp_path / "votes"), k=3, chunk_rows=200))
    df = pl.from_arrow(pa.Table.from_pylist(rows, schema=arrow.TRAJECTORY)).filter(pl.col(c.SAMPLE_INDEX) < 3)
    pure = rl.reliability(rl.sample_stats(rl.trajectory_picks(df), vote.vote_frame(df, 3, 0, "random")), 0, 0)
    got = manifest["reliability"]
    for key in ("position_consistency", "flip_rate", "same_order_agreement", "agreement_with_vote", "fleiss_kappa"):
        assert got[key] == pytest.approx(pure[key]["value"]), key
    assert got["first_slot_rate_pairs"] == pytest.approx(pure["first_slot_rate_pairs"]["value"])
    assert got["samples_seen_in_two_orders"] == pure["position_consistency"]["samples"]
    assert json.loads((tmp_path / "votes" / "_manifest.json").read_text())["reliability"] == got
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[vote] reliability: ")]
    assert len(lines) == 1 and "position consistency" in lines[0] and "Fleiss' kappa" in lines[0]
