"""The column-wise renderer is byte-identical to the row-wise protocol renderer."""

import random

import polars as pl
import pytest

from jobs import render_frame as rf
from jobs.protocol import build_metarm_messages, load_template, render_prompt, template_from_text
from schemas import columns as c

TRICKY = ["plain", "", "braces {context} {responses} {i} {response}", "unicode é ✓ 数学", "multi\nline\n\nanswer", "\\boxed{7, 5}"]


def frame(seed: int, n_choices=(1, 2, 3, 4)):
    rng = random.Random(seed)
    rows = []
    for s in range(60):
        n = rng.choice(n_choices)
        ctx = [{"role": r, "content": rng.choice(TRICKY) + f" turn {t}"} for t, r in enumerate(rng.choice([["user"], ["system", "user"], ["user", "assistant", "user"]]))]
        rows.append({c.ID: str(s), c.CONTEXT: ctx, c.RESPONSES: [rng.choice(TRICKY) + f" r{i}" for i in range(n)],
                     c.PERMUTATION: rng.sample(range(n), n)})
    return rows


@pytest.mark.parametrize("name", ["default", "single", "rm_r1_pairwise", "custom"])
def test_grm_prompt_matches_protocol(name):
    if name == "custom":
        tpl = template_from_text("---\nresponse_block: <{letter}|{i}> {response} </{i}>\nresponse_separator: \\n--\\n\n---\nA {context} B {responses} C {i}\n")
    else:
        tpl = load_template(name)
    rows = [r for r in frame(1) if tpl.check_n(len(r[c.RESPONSES])) is None]
    assert rows
    got = pl.DataFrame(rows).select(rf.grm_prompt(tpl).alias("p"))["p"].to_list()
    want = [render_prompt(tpl, r[c.CONTEXT], [r[c.RESPONSES][i] for i in r[c.PERMUTATION]]) for r in rows]
    assert got == want


def test_metarm_prompt_and_messages_match_protocol():
    rows = frame(2)
    df = pl.DataFrame(rows).with_columns(pl.lit("the critique").alias(c.TEXT))
    out = df.select(rf.metarm_prompt().alias("p"), c.TEXT).to_arrow()
    got = rf.chat_array([("user", out["p"].combine_chunks()), ("assistant", out[c.TEXT].combine_chunks())]).to_pylist()
    want = [build_metarm_messages(r[c.CONTEXT], [r[c.RESPONSES][i] for i in r[c.PERMUTATION]], "the critique") for r in rows]
    assert got == want


def test_chat_array_handles_sliced_chunked_and_null_input():
    import pyarrow as pa

    prompts = pa.array(["p0", "p1 é", "p2 " * 50, "p3"], pa.large_string()).slice(1)  # starts mid-buffer
    texts = pa.chunked_array([pa.array(["t1"]), pa.array([None, "t3 ✓"])]).combine_chunks()
    got = rf.chat_array([("user", prompts), ("assistant", texts)]).to_pylist()
    assert got == [
        [{"role": "user", "content": "p1 é"}, {"role": "assistant", "content": "t1"}],
        [{"role": "user", "content": "p2 " * 50}, {"role": "assistant", "content": ""}],
        [{"role": "user", "content": "p3"}, {"role": "assistant", "content": "t3 ✓"}],
    ]
    one = rf.chat_array([("user", pa.array(["only"]))]).to_pylist()
    assert one == [[{"role": "user", "content": "only"}]]
