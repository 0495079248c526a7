"""The GRM text protocol: templates (prompt in), parsing (scores out). Pure stdlib.

Contract (SPEC section 2):

Prompt. A template is data: a text file with optional front matter between two ``---`` lines
(``key: value`` per line, ``#`` comments, ``\\n`` in a value is a newline) and a body with the
placeholders ``{context}`` and ``{responses}``. Keys: ``name``, ``score_min``, ``score_max``,
``parser`` (``scores`` | ``pairwise``), ``response_block`` (one response; ``{i}`` is its 1-based
view index, ``{letter}`` its letter A, B, ..., ``{response}`` its text), ``response_separator``,
``hint`` (``{j}`` / ``{letter}`` name the hinted view), ``min_responses``, ``max_responses``.
Built-ins: ``default`` (paper Appendix G, byte-exact), ``single`` (n = 1, scores 0..1) and
``rm_r1_pairwise`` (n = 2, verdict ``<answer>[[A]]</answer>``). ``build_messages`` renders one
user turn; a hint line is appended to it.

Parsing. ``parse_output(text, n, template)`` never raises. For the ``scores`` parser:
 1. look after the last ``Scores:`` if there is one; take the last ``\\boxed{...}`` there (braces
    balanced, so ``\\boxed{\\text{8}, 6}`` works), else the last one in the whole text, else the
    last ``[[...]]`` (after ``Scores:`` first, then the whole text). The last match wins.
 2. strip ``\\text{...}``-style wrappers and markdown emphasis; split on commas or semicolons.
 3. the count must equal n and every value must be a plain integer (optional sign, surrounding
    whitespace allowed; ``7.0``, ``7.5`` and ``N/A`` are not) in [score_min, score_max].
Failures are typed, checked in this order: ``no_scores`` (no match, or an empty match),
``wrong_count``, ``not_integer``, ``out_of_range``. When the generation hit max_tokens
(``truncated=True``) any failure is reported as ``truncated`` instead. Scores are in the order
the model saw the responses (view order); mapping back to the original order is the caller's.
For the ``pairwise`` parser the verdict is the last ``[[A]]``/``[[B]]`` inside the last
``<answer>...</answer>`` (else in the whole text): A gives (1, 0), B gives (0, 1).

Principles are the ``Specific Criteria:`` section (up to ``Analysis:`` or ``Scores:``), the
critique is the ``Analysis:`` section (up to ``Scores:``); for the pairwise format they are the
``<rubric>`` and ``<eval>`` blocks. A missing section is None.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from dataclasses import dataclass
from pathlib import Path

from tribunal.schemas.errors import TribunalError

BUILTIN_TEMPLATES = ("default", "single", "rm_r1_pairwise", "toy", "toy_single")
PARSERS = ("scores", "pairwise")
PARSE_ERRORS = ("no_scores", "wrong_count", "not_integer", "out_of_range", "truncated")

_DEFAULT_RESPONSE_BLOCK = "[The Begin of Response {i}]\n{response}\n[The End of Response {i}]"
_DEFAULT_HINT = "The best response is: Response {j}"
_FRONT_MATTER_KEYS = (
    "name",
    "score_min",
    "score_max",
    "parser",
    "response_block",
    "response_separator",
    "hint",
    "min_responses",
    "max_responses",
)


@dataclass(frozen=True)
class Template:
    """A GRM prompt template and how to read the model's answer to it."""

    name: str
    """Short name, used in manifests and messages."""
    body: str
    """Prompt text with the placeholders ``{context}`` and ``{responses}``."""
    score_min: int = 1
    """Smallest valid score (inclusive)."""
    score_max: int = 10
    """Largest valid score (inclusive)."""
    parser: str = "scores"
    """``scores`` (one boxed integer per response) or ``pairwise`` (``[[A]]``/``[[B]]``)."""
    response_block: str = _DEFAULT_RESPONSE_BLOCK
    """How one response is rendered: ``{i}`` 1-based view index, ``{letter}``, ``{response}``."""
    hint: str = _DEFAULT_HINT
    """The hint line appended to the user turn: ``{j}`` 1-based hinted view index, ``{letter}``."""
    min_responses: int = 1
    """Fewest responses a sample may have for this template."""
    max_responses: int | None = None
    """Most responses a sample may have for this template; None means no limit."""
    response_separator: str = "\n"
    """Text between two rendered response blocks."""

    def __post_init__(self) -> None:
        problem = self._problem()
        if problem is not None:
            raise TribunalError(f"template {self.name!r}: {problem}")

    def _problem(self) -> str | None:
        if self.parser not in PARSERS:
            return f"parser must be one of {', '.join(PARSERS)}, got {self.parser!r}"
        if self.score_min > self.score_max:
            return f"score_min {self.score_min} > score_max {self.score_max}"
        if self.min_responses < 1:
            return f"min_responses must be >= 1, got {self.min_responses}"
        if self.max_responses is not None and self.max_responses < self.min_responses:
            return f"max_responses {self.max_responses} < min_responses {self.min_responses}"
        if self.parser == "pairwise" and (self.min_responses, self.max_responses) != (2, 2):
            # The verdict names one of exactly two chatbots; any other n cannot be scored.
            return "parser 'pairwise' needs min_responses = max_responses = 2"
        for placeholder in ("{context}", "{responses}"):
            if placeholder not in self.body:
                return f"body lacks the placeholder {placeholder}"
        if "{response}" not in self.response_block:
            return "response_block lacks the placeholder {response}"
        return None

    def check_n(self, n: int) -> str | None:
        """Why a sample with ``n`` responses cannot use this template, or None if it can."""
        if n < self.min_responses:
            return f"template {self.name!r} needs at least {self.min_responses} responses, got {n}"
        if self.max_responses is not None and n > self.max_responses:
            return f"template {self.name!r} takes at most {self.max_responses} responses, got {n}"
        return None


# ---------------------------------------------------------------------------------------------
# Loading


def _unescape(value: str) -> str:
    # Only \n and \\ are escapes, so a literal backslash elsewhere (e.g. \boxed) survives.
    return re.sub(r"\\(\\|n)", lambda m: "\n" if m.group(1) == "n" else "\\", value)


def _parse_template_text(text: str, source: str, default_name: str) -> Template:
    # Files edited on other systems may carry a BOM or CRLF line ends; neither belongs in a prompt.
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
    fields: dict[str, str] = {}
    body_lines = lines
    if lines and lines[0].rstrip() == "---":
        try:
            end = next(k for k in range(1, len(lines)) if lines[k].rstrip() == "---")
        except StopIteration:
            message = f"template {source}: front matter opened with '---' is never closed"
            raise TribunalError(message) from None
        for lineno, raw in enumerate(lines[1:end], start=2):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"template {source}, line {lineno}"
            key, sep, value = line.partition(":")
            key = key.strip()
            if not sep or not key:
                raise TribunalError(f"{where}: expected 'key: value', got {raw.strip()!r}")
            if key not in _FRONT_MATTER_KEYS:
                known = ", ".join(_FRONT_MATTER_KEYS)
                raise TribunalError(f"{where}: unknown key {key!r} (known: {known})")
            if key in fields:
                raise TribunalError(f"{where}: key {key!r} given twice")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
                value = value[1:-1]
            fields[key] = _unescape(value)
        body_lines = lines[end + 1 :]
    body = "\n".join(body_lines)
    # A text file ends with a newline; the prompt does not.
    if body.endswith("\n"):
        body = body[:-1]

    kwargs: dict[str, object] = {"name": fields.pop("name", default_name) or default_name, "body": body}
    for key in ("score_min", "score_max", "min_responses", "max_responses"):
        if key not in fields:
            continue
        raw_value = fields.pop(key)
        if key == "max_responses" and raw_value.lower() in ("", "none", "null", "~"):
            kwargs[key] = None
            continue
        try:
            kwargs[key] = int(raw_value)
        except ValueError:
            message = f"template {source}: key {key!r} must be an integer, got {raw_value!r}"
            raise TribunalError(message) from None
    kwargs.update(fields)
    try:
        return Template(**kwargs)  # type: ignore[arg-type]
    except TribunalError as e:
        detail = str(e).removeprefix(f"template {kwargs['name']!r}: ")
        raise TribunalError(f"template {source}: {detail}") from None


def template_from_text(text: str, name: str = "custom") -> Template:
    """A template from its file text (front matter optional); ``name`` is the default name."""
    return _parse_template_text(text, name, name)


@functools.lru_cache(maxsize=None)
def _load_builtin(name: str) -> Template:
    resource = importlib.resources.files("tribunal.jobs.grm") / "templates" / f"{name}.txt"
    text = resource.read_text(encoding="utf-8")
    return _parse_template_text(text, f"{name} (built-in)", name)


def load_template(name_or_path: str) -> Template:
    """A built-in template by name (``default``, ``single``, ``rm_r1_pairwise``) or one from a file.

    Raises TribunalError with a one-line message naming the file (and key) when the file is
    missing or its front matter is bad.
    """
    if name_or_path in BUILTIN_TEMPLATES:
        return _load_builtin(name_or_path)
    path = Path(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TribunalError(
            f"template {name_or_path}: no such file, and not a built-in ({', '.join(BUILTIN_TEMPLATES)})"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise TribunalError(f"template {name_or_path}: cannot read ({type(e).__name__}: {e})") from None
    return _parse_template_text(text, str(path), path.stem)


# ---------------------------------------------------------------------------------------------
# Rendering


_ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # OpenAI-style content parts: keep the text parts, in order.
        parts = [p.get("text", "") if isinstance(p, dict) else str(p) for p in content]
        return "".join(p for p in parts if isinstance(p, str))
    return "" if content is None else str(content)


def render_context(messages: list[dict]) -> str:
    """The conversation as text: ``User: ...`` / ``Assistant: ...`` turns separated by blank lines."""
    turns = []
    for message in messages:
        role = str(message.get("role", ""))
        name = _ROLE_NAMES.get(role, role.title())
        turns.append(f"{name}: {_content_text(message.get('content'))}")
    return "\n\n".join(turns)


def _letter(i: int) -> str:
    # 1 -> A, 26 -> Z, 27 -> AA: the pairwise template only uses A and B.
    out = ""
    while i > 0:
        i, rem = divmod(i - 1, 26)
        out = chr(ord("A") + rem) + out
    return out


def _fill(pattern: str, values: dict[str, str]) -> str:
    # One pass, so a placeholder-looking string inside a response or the context is left alone
    # and braces meant literally (\boxed{x, x}) need no escaping.
    names = "|".join(re.escape(k) for k in values)
    return re.sub(r"\{(" + names + r")\}", lambda m: values[m.group(1)], pattern)


def render_prompt(template: Template, context: list[dict], responses_in_view_order: list[str]) -> str:
    """The user-turn text for a sample, responses numbered from 1 in the order given."""
    problem = template.check_n(len(responses_in_view_order))
    if problem is not None:
        raise TribunalError(problem)
    blocks = [
        _fill(template.response_block, {"i": str(i), "letter": _letter(i), "response": response})
        for i, response in enumerate(responses_in_view_order, start=1)
    ]
    return _fill(
        template.body,
        {"context": render_context(context), "responses": template.response_separator.join(blocks)},
    )


def hint_line(template: Template, j: int) -> str:
    """The hint line naming view index ``j`` (1-based) as the best response."""
    return _fill(template.hint, {"j": str(j), "letter": _letter(j)})


def build_messages(
    template: Template,
    context: list[dict],
    responses_in_view_order: list[str],
    hint: int | None = None,
) -> list[dict]:
    """The GRM's chat messages: one user turn with the rendered template (plus the hint line).

    ``hint`` is the 1-based view index of the best response, or None for an unhinted prompt.
    """
    content = render_prompt(template, context, responses_in_view_order)
    if hint is not None:
        if not 1 <= hint <= len(responses_in_view_order):
            raise TribunalError(f"hint {hint} is not a view index in 1..{len(responses_in_view_order)}")
        content = f"{content}\n{hint_line(template, hint)}"
    return [{"role": "user", "content": content}]


METARM_PREAMBLE = "Please score the responses."


def render_metarm_prompt(context: list[dict], responses_in_view_order: list[str]) -> str:
    """The meta-RM user turn (SPEC section 5): context and responses in the order the GRM saw them."""
    blocks = [
        f"[The Begin of Response {i}]\n{response}\n[The End of Response {i}]"
        for i, response in enumerate(responses_in_view_order, start=1)
    ]
    return (
        f"{METARM_PREAMBLE}\n#### Conversation Context ####\n{render_context(context)}\n"
        f"#### Responses to be Scored ####\n" + "\n".join(blocks)
    )


def build_metarm_messages(context: list[dict], responses_in_view_order: list[str], trajectory_text: str) -> list[dict]:
    """Meta-RM chat messages: the sample as the user turn, the GRM's principles and critique
    (the trajectory text) as the assistant turn."""
    return [
        {"role": "user", "content": render_metarm_prompt(context, responses_in_view_order)},
        {"role": "assistant", "content": trajectory_text},
    ]


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass(frozen=True)
class ParseResult:
    """What one GRM generation says: scores in view order, or why there are none."""

    scores: tuple[int, ...] | None
    """One integer per response in the order the model saw them; None on failure."""
    error: str | None
    """None on success, else one of PARSE_ERRORS."""
    principles: str | None = None
    """The ``Specific Criteria:`` section (or ``<rubric>``), None if absent."""
    critique: str | None = None
    """The ``Analysis:`` section (or ``<eval>``), None if absent."""

    @property
    def ok(self) -> bool:
        return self.error is None


_BOXED_OPEN = re.compile(r"\\boxed\s*\{")
# \{ and \} are literal braces in LaTeX, not structure: matched first so they are skipped.
_BRACE = re.compile(r"\\[{}]|[{}]")
_DOUBLE_BRACKET = re.compile(r"\[\[([^\[\]]*)\]\]")
_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_INTEGER = re.compile(r"[+-]?[0-9]+")
_VERDICT = re.compile(r"\[\[\s*([AB])\s*\]\]")
_SCORES_LABEL = "Scores:"
# Markdown may bold the label itself (**Analysis:** or **Analysis**:).
_CRITERIA_RE = re.compile(r"Specific Criteria(?:\*\*|__)?\s*:")
_ANALYSIS_RE = re.compile(r"Analysis(?:\*\*|__)?\s*:")
_SCORES_RE = re.compile(r"Scores(?:\*\*|__)?\s*:")
_WRAPPER_PASSES = 8


def _last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` (outermost if nested); braces are balanced.

    One left-to-right pass with a stack, so inputs full of unclosed ``\\boxed{`` stay linear.
    Boxes are nested or disjoint, so the last one to close is the outermost of the last group.
    """
    opens = {m.end() - 1: m.end() for m in _BOXED_OPEN.finditer(text)}
    if not opens:
        return None
    stack: list[int] = []
    last: tuple[int, int] | None = None
    for m in _BRACE.finditer(text, min(opens)):
        brace = m.group()
        if brace == "{":
            stack.append(m.start())
        elif brace == "}" and stack:
            start = stack.pop()
            if start in opens:
                last = (opens[start], m.start())
    return None if last is None else text[last[0] : last[1]]


def _last_double_bracket(text: str) -> str | None:
    last = None
    for m in _DOUBLE_BRACKET.finditer(text):
        last = m
    return None if last is None else last.group(1)


def _find_score_text(text: str) -> str | None:
    cut = text.rfind(_SCORES_LABEL)
    tail = text[cut + len(_SCORES_LABEL) :] if cut >= 0 else None
    for finder in (_last_boxed, _last_double_bracket):
        for region in (tail, text):
            if region is None:
                continue
            found = finder(region)
            if found is not None:
                return found
    return None


def _clean_value(value: str) -> str:
    value = value.strip()
    # Emphasis may wrap a value (**8**, _8_) or be split around it; none of it is a digit.
    value = value.strip("*_").strip()
    return value


def _parse_values(raw: str, n: int, lo: int, hi: int) -> tuple[tuple[int, ...] | None, str | None]:
    for _ in range(_WRAPPER_PASSES):
        unwrapped = _WRAPPER.sub(r"\1", raw)
        if unwrapped == raw:
            break
        raw = unwrapped
    if not raw.strip().strip("*_").strip():
        return None, "no_scores"
    values = [_clean_value(v) for v in re.split(r"[,;]", raw)]
    if len(values) != n:
        return None, "wrong_count"
    if not all(_INTEGER.fullmatch(v) for v in values):
        return None, "not_integer"
    scores = tuple(int(v) for v in values)
    if not all(lo <= s <= hi for s in scores):
        return None, "out_of_range"
    return scores, None


def _section(text: str, start_re: re.Pattern[str], end_res: tuple[re.Pattern[str], ...]) -> str | None:
    m = start_re.search(text)
    if m is None:
        return None
    rest = text[m.end() :]
    end = len(rest)
    for end_re in end_res:
        e = end_re.search(rest)
        if e is not None:
            end = min(end, e.start())
    return rest[:end].strip().strip("*").strip()


def _tag_block(text: str, tag: str) -> str | None:
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.find(f"</{tag}>", start)
    return (text[start:] if end < 0 else text[start:end]).strip()


def _parse_pairwise(text: str, n: int) -> tuple[tuple[int, ...] | None, str | None]:
    verdict = None
    answer_start = text.rfind("<answer>")
    if answer_start >= 0:
        answer_end = text.find("</answer>", answer_start)
        if answer_end >= 0:
            found = _VERDICT.findall(text[answer_start:answer_end])
            verdict = found[-1] if found else None
    if verdict is None:
        found = _VERDICT.findall(text)
        verdict = found[-1] if found else None
    if verdict is None:
        return None, "no_scores"
    if n != 2:
        return None, "wrong_count"
    return ((1, 0) if verdict == "A" else (0, 1)), None


def parse_output(
    text: str, n: int, template: Template | None = None, *, truncated: bool = False
) -> ParseResult:
    """Scores (view order) and sections from one GRM generation; never raises (see module doc).

    ``template`` defaults to the ``default`` built-in (scores 1..10). ``truncated`` says the
    generation stopped at max_tokens; then any failure is reported as ``truncated``.
    """
    if not isinstance(text, str):
        text = ""
    parser = template.parser if template is not None else "scores"
    lo, hi = (template.score_min, template.score_max) if template is not None else (1, 10)
    if parser == "pairwise":
        scores, error = _parse_pairwise(text, n)
        principles, critique = _tag_block(text, "rubric"), _tag_block(text, "eval")
    else:
        raw = _find_score_text(text)
        scores, error = (None, "no_scores") if raw is None else _parse_values(raw, n, lo, hi)
        principles = _section(text, _CRITERIA_RE, (_ANALYSIS_RE, _SCORES_RE))
        critique = _section(text, _ANALYSIS_RE, (_SCORES_RE,))
    if error is not None and truncated:
        error = "truncated"
    return ParseResult(scores=scores, error=error, principles=principles, critique=critique)


# ---------------------------------------------------------------------------------------------
# The template a model was trained on

MODEL_RECORD = "tribunal_model.json"
"""The file in a model directory that records what tribunal trained it on (``training/model_record.py``)."""


def model_templates(model_dir: str) -> dict[str, str]:
    """The templates a model directory records it was trained on: ``{"template": ...,
    "template_single": ...}`` from its ``tribunal_model.json`` (what ``tribunal train sft`` and the
    model builders write), only the keys recorded. A value naming a file inside the directory (a
    template file the model carries, ``tribunal_template.txt``) comes back as that file's path, so
    ``load_template`` takes either value as is. ``{}`` for a remote path, or when the file or the
    keys are absent or the file is malformed: never raises."""
    import json
    import os

    try:
        if not isinstance(model_dir, str) or "://" in model_dir:
            return {}
        with open(os.path.join(model_dir, MODEL_RECORD), encoding="utf-8") as f:
            record = json.load(f)
        if not isinstance(record, dict):
            return {}
        found: dict[str, str] = {}
        for key in ("template", "template_single"):
            value = record.get(key)
            if not isinstance(value, str) or not value:
                continue
            # a bare file name inside the directory only: a record never points outside its model
            if value not in BUILTIN_TEMPLATES and os.path.basename(value) == value and os.path.isfile(os.path.join(model_dir, value)):
                value = os.path.join(model_dir, value)
            found[key] = value
        return found
    except Exception:  # noqa: BLE001 - a model without a readable record simply has none
        return {}
