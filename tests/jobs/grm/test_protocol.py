"""The GRM text protocol: templates render the SPEC's text, the parser keeps the SPEC's contract."""

from __future__ import annotations

import random
import string

import pytest

from tribunal.jobs.grm.protocol import (
    BUILTIN_TEMPLATES,
    PARSE_ERRORS,
    ParseResult,
    Template,
    build_messages,
    load_template,
    parse_output,
    render_context,
)
from tribunal.schemas.errors import TribunalError

CONTEXT = [{"role": "user", "content": "What is 2 + 2?"}]

# The head and tail of the paper's Appendix G prompt (SPEC section 2), byte for byte.
DEFAULT_HEAD = (
    "You are a skilled little expert at scoring responses. You should evaluate given responses based on "
    "the given judging criteria.\n"
    "Given the context of the conversation (the last round is the User's query) and multiple responses "
    "from the Assistant, you need to refer to the [General Evaluation Criteria] to score the responses. "
    "Based on the general evaluation criteria, state potential other specific criteria to the query, the "
    "weights of different criteria, and then provide an overall comprehensive score upon them.\n"
    "Each score is an integer between 1 and 10, with a higher score indicating that the response meets the "
    "relevant criteria more closely. For example, a score of 1 means the response does not meet the criteria "
    "at all, a score of 6 means the response meets only some parts, and a score of 10 means the response "
    "perfectly meets the evaluation criteria.\n"
    "Before scoring, please analyze step by step. Your scoring needs to be as strict as possible.\n"
    "\n"
    "#### Evaluation Criteria ####\n"
    "1. Instruction Adherence:\n"
    " - Fully Adhered (9-10 points): The response fully complies with all instructions and requirements of "
    "the question.\n"
)
DEFAULT_TAIL = (
    "#### Conversation Context ####\n"
    "User: What is 2 + 2?\n"
    "\n"
    "#### Responses to be Scored ####\n"
    "[The Begin of Response 1]\n"
    "4\n"
    "[The End of Response 1]\n"
    "[The Begin of Response 2]\n"
    "5\n"
    "[The End of Response 2]\n"
    "\n"
    "#### Output Format Requirements ####\n"
    "Output with three lines\n"
    "Specific Criteria: <Other potential criteria specific to the query and the context, and the weights of "
    "each criteria>.\n"
    "Analysis: <Compare different responses based on given Criteria>.\n"
    "Scores: <the overall comprehensive score of all responses in order, separate by comma in the boxed, "
    "e.g., \\boxed{x, x} if there exists 2 responeses>."
)


@pytest.fixture(scope="module")
def default() -> Template:
    return load_template("default")


@pytest.fixture(scope="module")
def single() -> Template:
    return load_template("single")


@pytest.fixture(scope="module")
def pairwise() -> Template:
    return load_template("rm_r1_pairwise")


# ---------------------------------------------------------------------------------------------
# Templates


@pytest.mark.parametrize("name", BUILTIN_TEMPLATES)
def test_every_builtin_loads_and_renders(name: str) -> None:
    template = load_template(name)
    assert template.name == name
    n = template.min_responses if template.max_responses is None else template.max_responses
    [message] = build_messages(template, CONTEXT, [f"answer {i}" for i in range(n)])
    assert message["role"] == "user"
    assert "What is 2 + 2?" in message["content"]
    assert all(f"answer {i}" in message["content"] for i in range(n))
    assert "{context}" not in message["content"] and "{responses}" not in message["content"]


def test_default_template_is_appendix_g_byte_for_byte(default: Template) -> None:
    [message] = build_messages(default, CONTEXT, ["4", "5"])
    content = message["content"]
    assert content.startswith(DEFAULT_HEAD)
    assert content.endswith(DEFAULT_TAIL)
    assert "responeses" in content  # the original typo, kept on purpose
    for header in ("1. Instruction Adherence:", "2. Usefulness:", "3. Level of Detail:", "4. Relevance:"):
        assert f"\n{header}\n" in content
    assert content.count(" Example: ") == 4
    assert (default.score_min, default.score_max, default.parser) == (1, 10, "scores")
    assert default.check_n(1) is None and default.check_n(9) is None


def test_default_response_blocks_number_from_one_in_view_order(default: Template) -> None:
    content = build_messages(default, CONTEXT, ["x", "y", "z"])[0]["content"]
    assert "[The Begin of Response 1]\nx\n[The End of Response 1]\n[The Begin of Response 2]\ny\n" in content
    assert "[The Begin of Response 3]\nz\n[The End of Response 3]\n\n#### Output" in content


def test_placeholder_text_inside_responses_is_not_substituted(default: Template) -> None:
    tricky_context = [{"role": "user", "content": "{responses}"}]
    content = build_messages(default, tricky_context, ["{context}", "{i}"])[0]["content"]
    assert "User: {responses}\n" in content
    assert "[The Begin of Response 1]\n{context}\n" in content
    assert "[The Begin of Response 2]\n{i}\n" in content


def test_hint_line_is_appended_to_the_user_turn(default: Template) -> None:
    plain = build_messages(default, CONTEXT, ["4", "5"])[0]["content"]
    hinted = build_messages(default, CONTEXT, ["4", "5"], hint=2)
    assert len(hinted) == 1 and hinted[0]["role"] == "user"
    assert hinted[0]["content"] == plain + "\nThe best response is: Response 2"
    with pytest.raises(TribunalError, match="hint 3"):
        build_messages(default, CONTEXT, ["4", "5"], hint=3)
    with pytest.raises(TribunalError, match="hint 0"):
        build_messages(default, CONTEXT, ["4", "5"], hint=0)


def test_single_template(single: Template) -> None:
    content = build_messages(single, CONTEXT, ["4"])[0]["content"]
    assert "The score is 0 or 1, with 1 indicating that the response is correct.\n" in content
    assert "Each score is an integer between 1 and 10" not in content
    for criterion in ("1. Instruction Adherence: ", "2. Clarity: ", "3. Accuracy: "):
        assert f"\n{criterion}" in content
    assert "points)" not in content  # no point bands
    assert "[The Begin of Response]\n4\n[The End of Response]\n" in content
    assert content.endswith("\nScores: <the overall comprehensive score of the response, e.g., \\boxed{x}>")
    assert content.startswith(DEFAULT_HEAD.split("\n")[0])
    assert (single.score_min, single.score_max) == (0, 1)
    assert single.check_n(1) is None
    assert "at most 1" in single.check_n(2)
    with pytest.raises(TribunalError, match="at most 1"):
        build_messages(single, CONTEXT, ["4", "5"])


def test_pairwise_template(pairwise: Template) -> None:
    content = build_messages(pairwise, CONTEXT, ["4", "5"], hint=1)[0]["content"]
    assert "[The Start of Chatbot A's Response]\n4\n[The End of Chatbot A's Response]\n\n" in content
    assert "[The Start of Chatbot B's Response]\n5\n[The End of Chatbot B's Response]" in content
    assert "<answer>[[A]]</answer> or <answer>[[B]]</answer>" in content
    assert content.endswith("\nThe better response is: Chatbot A")
    assert pairwise.check_n(2) is None
    assert pairwise.check_n(1) is not None and pairwise.check_n(3) is not None


def test_render_context_roles() -> None:
    text = render_context(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "tool", "content": "42"},
            {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
        ]
    )
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant: Hello\n\nTool: 42\n\nUser: Bye"


def test_custom_template_file(tmp_path) -> None:
    path = tmp_path / "mine.txt"
    path.write_text(
        "---\n"
        "# a comment\n"
        "score_min: 0\n"
        "score_max: 5\n"
        "response_block: <r{i}>{response}</r{i}>\n"
        "response_separator: ' | '\n"
        'hint: "Pick {j}."\n'
        "min_responses: 2\n"
        "max_responses: 3\n"
        "---\n"
        "Q: {context}\n"
        "R: {responses}\n"
        "Answer \\boxed{a, b}.\n",
        encoding="utf-8",
    )
    template = load_template(str(path))
    assert template.name == "mine"  # defaults to the file stem
    assert (template.score_min, template.score_max) == (0, 5)
    assert (template.min_responses, template.max_responses) == (2, 3)
    content = build_messages(template, CONTEXT, ["a", "b"], hint=1)[0]["content"]
    assert content == "Q: User: What is 2 + 2?\nR: <r1>a</r1> | <r2>b</r2>\nAnswer \\boxed{a, b}.\nPick 1."
    assert parse_output("\\boxed{0, 5}", 2, template).scores == (0, 5)
    assert parse_output("\\boxed{0, 6}", 2, template).error == "out_of_range"


def test_template_file_with_crlf_and_bom(tmp_path) -> None:
    path = tmp_path / "windows.txt"
    path.write_bytes("\ufeff---\r\nscore_max: 3\r\n---\r\n{context}\r\n{responses}\r\n".encode())
    template = load_template(str(path))
    assert template.score_max == 3
    assert template.body == "{context}\n{responses}"


def test_template_without_front_matter_uses_defaults(tmp_path) -> None:
    path = tmp_path / "bare.txt"
    path.write_text("{context}\n{responses}\n", encoding="utf-8")
    template = load_template(str(path))
    assert (template.name, template.parser) == ("bare", "scores")
    assert (template.score_min, template.score_max) == (1, 10)
    content = build_messages(template, CONTEXT, ["a"], hint=1)[0]["content"]
    assert content == (
        "User: What is 2 + 2?\n[The Begin of Response 1]\na\n[The End of Response 1]\n"
        "The best response is: Response 1"
    )


@pytest.mark.parametrize(
    ("front", "body", "needle"),
    [
        ("score_max: ten\n", "{context}{responses}", "'score_max'"),
        ("colour: red\n", "{context}{responses}", "'colour'"),
        ("just words\n", "{context}{responses}", "line 2"),
        ("parser: regex\n", "{context}{responses}", "parser"),
        ("score_min: 5\nscore_max: 1\n", "{context}{responses}", "score_min"),
        ("", "{context} only", "{responses}"),
        ("parser: pairwise\n", "{context}{responses}", "pairwise"),
        ("name: a\nname: b\n", "{context}{responses}", "'name' given twice"),
    ],
)
def test_bad_front_matter_names_file_and_key(tmp_path, front: str, body: str, needle: str) -> None:
    path = tmp_path / "broken.txt"
    path.write_text(f"---\n{front}---\n{body}\n", encoding="utf-8")
    with pytest.raises(TribunalError) as info:
        load_template(str(path))
    message = str(info.value)
    assert str(path) in message and needle in message
    assert "\n" not in message


def test_unclosed_front_matter_and_missing_file(tmp_path) -> None:
    path = tmp_path / "open.txt"
    path.write_text("---\nname: x\n{context}{responses}\n", encoding="utf-8")
    with pytest.raises(TribunalError, match="never closed"):
        load_template(str(path))
    missing = tmp_path / "nope.txt"
    with pytest.raises(TribunalError, match="no such file") as info:
        load_template(str(missing))
    assert str(missing) in str(info.value)


# ---------------------------------------------------------------------------------------------
# Parsing: scores


@pytest.mark.parametrize(
    ("text", "n", "scores", "error"),
    [
        ("Scores: \\boxed{8, 6}", 2, (8, 6), None),
        ("The scores are [[2, 4]].", 2, (2, 4), None),
        ("Scores: \\boxed{7, 5} see [1]", 2, (7, 5), None),
        ("Scores: \\boxed{7, N/A}", 2, None, "not_integer"),
        ("Scores: \\boxed{11, 0}", 2, None, "out_of_range"),
        ("**Scores: \\boxed{8, 8}**", 2, (8, 8), None),
        ("**Scores:** \\boxed{**9**, *3*}", 2, (9, 3), None),
        ("Scores: \\boxed{\\text{8}, \\text{6}}", 2, (8, 6), None),
        ("Scores: \\boxed{\\textbf{\\text{8}}, 6}", 2, (8, 6), None),
        ("\\boxed{1, 2} then \\boxed{3, 4}. Scores: \\boxed{5, 6} and \\boxed{7, 8}", 2, (7, 8), None),
        ("Analysis: \\boxed{2, 9} looks off.\nScores: \\boxed{9, 2}", 2, (9, 2), None),
        ("Analysis: I give \\boxed{4, 7}.\nScores: 4 and 7", 2, (4, 7), None),
        ("Scores: \\boxed{3; 4; 5}", 3, (3, 4, 5), None),
        ("Scores: \\boxed{ 3 ,4,  5 }", 3, (3, 4, 5), None),
        ("Scores: \\boxed{+7, 5}", 2, (7, 5), None),
        ("Scores: \\boxed{8, 6}", 3, None, "wrong_count"),
        ("Scores: \\boxed{8, 6, 5}", 2, None, "wrong_count"),
        ("Scores: \\boxed{8, 6,}", 2, None, "wrong_count"),
        ("Scores: \\boxed{7.5, 6}", 2, None, "not_integer"),
        ("Scores: \\boxed{7.0, 6}", 2, None, "not_integer"),
        ("Scores: \\boxed{seven, 11}", 2, None, "not_integer"),
        ("Scores: \\boxed{-3, 6}", 2, None, "out_of_range"),
        ("Scores: \\boxed{}", 2, None, "no_scores"),
        ("Scores: \\boxed{ ** }", 1, None, "no_scores"),
        ("Scores: 8, 6", 2, None, "no_scores"),
        ("", 2, None, "no_scores"),
        ("Scores: \\boxed{7,", 2, None, "no_scores"),
        ("Scores: \\boxed{8, \\boxed{6}}", 2, None, "not_integer"),
        ("Scores: \\boxed{8} \\boxed{6}", 2, None, "wrong_count"),
        ("[[1, 2]] Scores: \\boxed{3, 4}", 2, (3, 4), None),
        ("Scores: \\boxed{٣, 4}", 2, None, "not_integer"),
    ],
)
def test_parse_scores(default: Template, text: str, n: int, scores, error) -> None:
    result = parse_output(text, n, default)
    assert (result.scores, result.error) == (scores, error)
    assert result.ok is (error is None)


def test_default_template_is_the_default_parser() -> None:
    text = "Scores: \\boxed{10, 1}"
    assert parse_output(text, 2) == parse_output(text, 2, load_template("default"))
    assert parse_output("Scores: \\boxed{0, 1}", 2).error == "out_of_range"


def test_shortened_list_is_never_accepted(default: Template) -> None:
    for k in range(1, 6):
        values = ", ".join(["5"] * k)
        for n in range(1, 6):
            result = parse_output(f"Scores: \\boxed{{{values}}}", n, default)
            assert result.ok is (k == n)
            assert result.scores is None or len(result.scores) == n


def test_truncated(default: Template) -> None:
    text = "Specific Criteria: accuracy.\nAnalysis: response 1 is right.\nScores: \\boxed{7,"
    assert parse_output(text, 2, default, truncated=True).error == "truncated"
    assert parse_output(text, 2, default, truncated=False).error == "no_scores"
    # Any failure becomes truncated; a complete score stays a success.
    assert parse_output("\\boxed{7, 11}", 2, default, truncated=True).error == "truncated"
    assert parse_output("\\boxed{7, 1}", 2, default, truncated=True).scores == (7, 1)


def test_single_template_scores_zero_or_one(single: Template) -> None:
    assert parse_output("Scores: \\boxed{1}", 1, single).scores == (1,)
    assert parse_output("Scores: \\boxed{0}", 1, single).scores == (0,)
    assert parse_output("Scores: \\boxed{2}", 1, single).error == "out_of_range"
    assert parse_output("Scores: \\boxed{1, 0}", 1, single).error == "wrong_count"
    assert parse_output("Scores: \\boxed{0.5}", 1, single).error == "not_integer"


def test_principles_and_critique(default: Template) -> None:
    text = (
        "Specific Criteria: Correctness (60%), clarity (40%).\n"
        "Analysis: Response 1 is right.\nResponse 2 miscounts.\n"
        "Scores: \\boxed{9, 3}"
    )
    result = parse_output(text, 2, default)
    assert result.principles == "Correctness (60%), clarity (40%)."
    assert result.critique == "Response 1 is right.\nResponse 2 miscounts."
    assert result.scores == (9, 3)

    bold = "**Specific Criteria:** accuracy\n**Analysis**: fine\n**Scores:** \\boxed{5, 5}"
    result = parse_output(bold, 2, default)
    assert (result.principles, result.critique) == ("accuracy", "fine")

    no_analysis = parse_output("Specific Criteria: accuracy.\nScores: \\boxed{5, 6}", 2, default)
    assert (no_analysis.principles, no_analysis.critique) == ("accuracy.", None)

    nothing = parse_output("\\boxed{5, 6}", 2, default)
    assert (nothing.principles, nothing.critique, nothing.scores) == (None, None, (5, 6))

    # Sections survive a failed parse: they are kept as rows with the reason.
    cut = parse_output("Specific Criteria: a\nAnalysis: b is bett", 2, default, truncated=True)
    assert (cut.principles, cut.critique, cut.error) == ("a", "b is bett", "truncated")


# ---------------------------------------------------------------------------------------------
# Parsing: pairwise


@pytest.mark.parametrize(
    ("text", "scores", "error"),
    [
        ("<eval>A is right</eval>\n<answer>[[A]]</answer>", (1, 0), None),
        ("<answer>[[B]]</answer>", (0, 1), None),
        ("[[A]] at first, but on reflection <answer>[[B]]</answer>", (0, 1), None),
        ("<answer>[[A]]</answer> ... the format asks for [[B]]", (1, 0), None),
        ("Final verdict: [[B]]", (0, 1), None),
        ("<answer>[[ A ]]</answer>", (1, 0), None),
        ("<answer>[[C]]</answer>", None, "no_scores"),
        ("<answer>A</answer>", None, "no_scores"),
        ("Scores: \\boxed{1, 0}", None, "no_scores"),
        ("", None, "no_scores"),
    ],
)
def test_parse_pairwise(pairwise: Template, text: str, scores, error) -> None:
    result = parse_output(text, 2, pairwise)
    assert (result.scores, result.error) == (scores, error)


def test_pairwise_sections_and_truncation(pairwise: Template) -> None:
    text = "<type>Chat</type>\n<rubric>helpfulness 70%</rubric>\n<eval>B is vague</eval>\n"
    text += "<answer>[[A]]</answer>"
    result = parse_output(text, 2, pairwise)
    assert (result.principles, result.critique, result.scores) == ("helpfulness 70%", "B is vague", (1, 0))
    assert parse_output("<eval>A is", 2, pairwise, truncated=True).error == "truncated"
    assert parse_output("<answer>[[A]]</answer>", 3, pairwise).error == "wrong_count"


# ---------------------------------------------------------------------------------------------
# Parsing never raises


def _garbage(rng: random.Random) -> str:
    pieces = [
        "\\boxed{", "}", "{", "\\text{", "[[", "]]", "Scores:", "Analysis:", "Specific Criteria:", ",", ";",
        "*", "**", "_", "<answer>", "</answer>", "[[A]]", "[[B]]", "<rubric>", "<eval>", "\\", "\\{", "\\}",
        "\n", " ", "-", "+", ".", "N/A", "\x00", "é", "٣", "\U0001f600",
    ]
    out = []
    for _ in range(rng.randrange(0, 60)):
        if rng.random() < 0.5:
            out.append(rng.choice(pieces))
        elif rng.random() < 0.5:
            out.append(str(rng.randrange(-20, 30)))
        else:
            out.append("".join(rng.choice(string.printable) for _ in range(rng.randrange(1, 8))))
    return "".join(out)


def test_fuzz_never_raises(default: Template, single: Template, pairwise: Template) -> None:
    rng = random.Random(0)
    for _ in range(4000):
        text = _garbage(rng)
        for template in (default, single, pairwise, None):
            n = rng.randrange(0, 5)
            result = parse_output(text, n, template, truncated=rng.random() < 0.3)
            assert isinstance(result, ParseResult)
            assert (result.scores is None) is (result.error is not None)
            assert result.error is None or result.error in PARSE_ERRORS
            if result.scores is not None:
                lo, hi = (template.score_min, template.score_max) if template else (1, 10)
                assert len(result.scores) == n and all(lo <= s <= hi for s in result.scores)


def test_huge_inputs_never_raise(default: Template, pairwise: Template) -> None:
    rng = random.Random(1)
    blob = "".join(rng.choice(string.printable) for _ in range(200_000))
    for text in (
        blob,
        "\\boxed{" * 50_000,
        "{" * 100_000 + "\\boxed{1, 2}",
        "[[" * 100_000,
        "Scores:" * 30_000 + "\\boxed{3, 4}",
        "\\text{" * 20_000 + "5" + "}" * 20_000,
        "\\boxed{" + "\\text{" * 5_000 + "5" + "}" * 5_001 + ", 6}",
    ):
        for template in (default, pairwise):
            assert isinstance(parse_output(text, 2, template, truncated=True), ParseResult)
    assert parse_output("{" * 100_000 + "\\boxed{1, 2}", 2, default).scores == (1, 2)
    assert parse_output("Scores:" * 30_000 + "\\boxed{3, 4}", 2, default).scores == (3, 4)
    assert parse_output("\\boxed{" * 50_000, 2, default).error == "no_scores"


def test_non_string_input_never_raises(default: Template) -> None:
    assert parse_output(None, 2, default).error == "no_scores"  # type: ignore[arg-type]


def test_model_templates_reads_the_record_and_never_raises(tmp_path) -> None:
    import json

    from tribunal.jobs.grm.protocol import MODEL_RECORD, model_templates

    model = tmp_path / "m"
    model.mkdir()
    assert model_templates(str(model)) == {}  # no record
    assert model_templates(str(tmp_path / "nowhere")) == {}
    assert model_templates("s3://bucket/model") == {}  # local paths only
    record = model / MODEL_RECORD
    record.write_text(json.dumps({"kind": "grm", "template": "toy", "template_single": "toy_single", "seed": 0}))
    assert model_templates(str(model)) == {"template": "toy", "template_single": "toy_single"}
    record.write_text(json.dumps({"kind": "meta-rm"}))
    assert model_templates(str(model)) == {}
    record.write_text(json.dumps({"template": "default", "template_single": 3}))  # a key of the wrong type is absent
    assert model_templates(str(model)) == {"template": "default"}
    for bad in ("{not json", "[1, 2]", "\xff\xfe", ""):
        record.write_text(bad, encoding="latin-1")
        assert model_templates(str(model)) == {}
    # a template file the model carries comes back as its path; a name outside the directory does not
    (model / "tribunal_template.txt").write_text(load_template("default").body)
    record.write_text(json.dumps({"template": "tribunal_template.txt", "template_single": "../elsewhere.txt"}))
    got = model_templates(str(model))
    assert got == {"template": str(model / "tribunal_template.txt"), "template_single": "../elsewhere.txt"}
    assert load_template(got["template"]).body == load_template("default").body


def test_the_committed_models_record_their_templates() -> None:
    from pathlib import Path

    from tribunal.jobs.grm.protocol import model_templates

    root = Path(__file__).resolve().parents[3] / "training"
    assert model_templates(str(root / "toy" / "models" / "toy-grm")) == {"template": "toy", "template_single": "toy_single"}
    assert model_templates(str(root / "models" / "tiny-grm")) == {"template": "default", "template_single": "default"}
    assert model_templates(str(root / "toy" / "models" / "toy-metarm")) == {}
    for found in (model_templates(str(root / "toy" / "models" / "toy-grm")), model_templates(str(root / "models" / "tiny-grm"))):
        for name in found.values():
            load_template(name)
