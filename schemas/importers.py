"""Public reward-benchmark layouts read into tribunal's raw sample form. Pure stdlib + pyarrow.

Each layout is recognised by its columns and turned, row by row, into raw sample rows: ``id``,
``context`` (messages), ``responses``, ``labels`` (higher is better), ``subset`` and
``data_source``. ``schemas.validate.normalize`` then checks them like any other input, so a bad
benchmark row is quarantined with a reason, never dropped. Layouts:

=================  ==========================================================================
``rewardbench``     ``prompt``, ``chosen``, ``rejected`` strings (+ ``subset``, ``id``): one pair
``rm-bench``        ``prompt``, ``chosen`` and ``rejected`` as lists of 3 style variants
                    (+ ``domain``, ``id``): 9 pairs per row, id ``<id>/c<i>r<j>``; RM-Bench's
                    easy / normal / hard are the pairs with i > j, i == j, i < j
``rmb-bon``         ``bon_uid``, ``conversation_input`` (messages), ``bon_best`` {answer} and
                    ``loser_list`` [{answer}] (+ ``category_path``): best first, label 1, losers 0
``rmb-pairwise``    ``pair_uid``, ``conversation_input``, ``chosen`` {answer}, ``reject`` {answer}
``judgebench``      ``pair_id``, ``question``, ``response_A``, ``response_B``, ``label``
                    (``A>B`` / ``B>A``) (+ ``source``)
``helpsteer2``      one row per response: ``prompt``, ``response`` and a rating column
                    (``helpfulness`` by default); rows sharing a prompt become one sample whose
                    labels are the ratings
``verl``            verl's RL Parquet convention: ``data_source``, ``prompt`` (messages),
                    ``reward_model`` {ground_truth}; it holds no responses unless the file adds a
                    ``responses`` column (and ``labels``), so rows without them are quarantined
                    ``no_responses``; the ground truth is kept in ``reference``
=================  ==========================================================================
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa

from tribunal.schemas import arrow
from tribunal.schemas import columns as c
from tribunal.schemas.errors import TribunalError

SUBSET = "subset"
DATA_SOURCE = "data_source"
REFERENCE = "reference"

# Canonical samples as `tribunal import` writes them: the sample schema plus where each came from.
IMPORTED = arrow.SAMPLE.append(pa.field(SUBSET, pa.string())).append(pa.field(DATA_SOURCE, pa.string())).append(pa.field(REFERENCE, pa.string()))

RAW = pa.schema(
    [
        pa.field(c.ID, pa.string()),
        pa.field(c.CONTEXT, pa.list_(arrow.MESSAGE)),
        pa.field(c.RESPONSES, pa.list_(pa.string())),
        pa.field(c.LABELS, pa.list_(pa.float64())),
        pa.field(SUBSET, pa.string()),
        pa.field(DATA_SOURCE, pa.string()),
        pa.field(REFERENCE, pa.string()),
        pa.field(c.SOURCE_PATH, pa.string()),
    ]
)

# layout -> the columns that identify it (all must be present); checked in this order
SIGNATURES = {
    "rmb-bon": ("bon_uid", "conversation_input", "bon_best", "loser_list"),
    "rmb-pairwise": ("pair_uid", "conversation_input", "chosen", "reject"),
    "judgebench": ("question", "response_A", "response_B", "label"),
    "helpsteer2": ("prompt", "response", "helpfulness"),
    "verl": ("data_source", "prompt", "reward_model"),
    "rm-bench": ("prompt", "chosen", "rejected", "domain"),
    "rewardbench": ("prompt", "chosen", "rejected"),
}
LAYOUTS = tuple(SIGNATURES)


def detect_layout(columns: Iterable[str], where: str) -> str:
    cols = set(columns)
    for layout, needed in SIGNATURES.items():
        if cols.issuperset(needed):
            return layout
    known = "; ".join(f"{name}: {', '.join(cols_)}" for name, cols_ in SIGNATURES.items())
    raise TribunalError(f"{where}: unknown layout, columns found: {', '.join(sorted(cols)) or '(none)'}; layouts known: {known}")


def read_parquet_bytes(data: bytes, name: str) -> pa.Table:
    """A whole Parquet file held in memory, as a table; a one-line error naming it if unreadable.

    The bytes are copied into Arrow's own memory first, and read without pre-buffering (they are
    in memory already). Handed a Python object (``io.BytesIO``, or ``pa.py_buffer``), Arrow's
    pre-buffer cache keeps slices of it in futures that its I/O threads may release after the
    read returns; when the process exits right after (an error found in the first rows), such a
    thread must take the GIL of a finalizing interpreter, which ends it with ``pthread_exit``
    inside a C++ ``noexcept`` frame: ``terminate called without an active exception``, exit 134.
    """
    import pyarrow.parquet as pq

    copy = pa.BufferOutputStream()  # Arrow-owned: freeing it on any thread needs no GIL
    copy.write(data)
    try:
        return pq.read_table(pa.BufferReader(copy.getvalue()), pre_buffer=False)
    except (pa.ArrowException, OSError) as e:
        raise TribunalError(f"{name}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def read_records(data: bytes, name: str) -> list[dict[str, Any]]:
    """Rows of a Parquet, JSON (an array of objects) or JSONL file, by its name's extension."""
    lower = name.lower()
    if lower.endswith(".parquet"):
        return read_parquet_bytes(data, name).to_pylist()
    text = data.decode("utf-8")
    if lower.endswith((".jsonl", ".ndjson")):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise TribunalError(f"{name}: line {n} is not JSON ({e.msg})") from None
        return rows
    if lower.endswith(".json"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise TribunalError(f"{name}: not JSON ({e.msg} at line {e.lineno})") from None
        if isinstance(doc, dict):  # {"data": [...]} or a single split
            doc = next((v for v in doc.values() if isinstance(v, list)), [doc])
        if not isinstance(doc, list):
            raise TribunalError(f"{name}: expected a JSON array of objects")
        return doc
    raise TribunalError(f"{name}: unsupported file type (use .parquet, .json or .jsonl)")


def _user(text: Any) -> list[dict]:
    return [{c.ROLE: "user", c.CONTENT: text}]


def _messages(conv: Any) -> list[dict] | None:
    if not isinstance(conv, list):
        return None
    return [{c.ROLE: m.get("role"), c.CONTENT: m.get("content")} if isinstance(m, dict) else {c.ROLE: None, c.CONTENT: None} for m in conv]


def _answer(x: Any) -> Any:
    return x.get("answer") if isinstance(x, dict) else x


def _str(x: Any) -> str | None:
    return None if x is None else str(x)


def _category(x: Any) -> str | None:
    return "/".join(map(str, x)) if isinstance(x, list) else _str(x)


def to_raw(records: list[dict[str, Any]], layout: str, rating: str = "helpfulness", source: str = "") -> Iterator[dict[str, Any]]:
    """Raw sample rows (``RAW``) of one file's records in ``layout``."""
    source = source or layout
    if layout == "rewardbench":
        for r in records:
            yield {c.ID: _str(r.get("id")), c.CONTEXT: _user(r.get("prompt")), c.RESPONSES: [r.get("chosen"), r.get("rejected")],
                   c.LABELS: [1.0, 0.0], SUBSET: _str(r.get("subset")), DATA_SOURCE: source}
    elif layout == "rm-bench":
        for n, r in enumerate(records):
            chosen, rejected = r.get("chosen"), r.get("rejected")
            base = _str(r.get("id")) or f"row{n}"
            if not isinstance(chosen, list) or not isinstance(rejected, list):
                yield {c.ID: base, c.CONTEXT: _user(r.get("prompt")), c.RESPONSES: None, SUBSET: _str(r.get("domain")), DATA_SOURCE: source}
                continue
            for i, ch in enumerate(chosen):
                for j, rj in enumerate(rejected):
                    yield {c.ID: f"{base}/c{i}r{j}", c.CONTEXT: _user(r.get("prompt")), c.RESPONSES: [ch, rj], c.LABELS: [1.0, 0.0],
                           SUBSET: _str(r.get("domain")), DATA_SOURCE: source}
    elif layout == "rmb-bon":
        for r in records:
            losers = r.get("loser_list") if isinstance(r.get("loser_list"), list) else []
            resp = [_answer(r.get("bon_best"))] + [_answer(x) for x in losers]
            yield {c.ID: _str(r.get("bon_uid")), c.CONTEXT: _messages(r.get("conversation_input")), c.RESPONSES: resp,
                   c.LABELS: [1.0] + [0.0] * len(losers), SUBSET: _category(r.get("category_path")), DATA_SOURCE: source}
    elif layout == "rmb-pairwise":
        for r in records:
            yield {c.ID: _str(r.get("pair_uid")), c.CONTEXT: _messages(r.get("conversation_input")),
                   c.RESPONSES: [_answer(r.get("chosen")), _answer(r.get("reject"))], c.LABELS: [1.0, 0.0],
                   SUBSET: _category(r.get("category_path")), DATA_SOURCE: source}
    elif layout == "judgebench":
        for r in records:
            label = str(r.get("label", "")).replace(" ", "")
            labels = [1.0, 0.0] if label == "A>B" else [0.0, 1.0] if label == "B>A" else [0.0, 0.0]  # A=B: no unique best
            yield {c.ID: _str(r.get("pair_id")), c.CONTEXT: _user(r.get("question")), c.RESPONSES: [r.get("response_A"), r.get("response_B")],
                   c.LABELS: labels, SUBSET: _str(r.get("source")), DATA_SOURCE: source}
    elif layout == "helpsteer2":
        groups: dict[str, list[dict]] = {}
        for r in records:
            groups.setdefault(json.dumps(r.get("prompt")), []).append(r)
        for rows in groups.values():
            yield {c.ID: None, c.CONTEXT: _user(rows[0].get("prompt")), c.RESPONSES: [x.get("response") for x in rows],
                   c.LABELS: [x.get(rating) for x in rows], SUBSET: rating, DATA_SOURCE: source}
    elif layout == "verl":
        for n, r in enumerate(records):
            extra = r.get("extra_info") if isinstance(r.get("extra_info"), dict) else {}
            rm = r.get("reward_model") if isinstance(r.get("reward_model"), dict) else {}
            ident = extra.get("index")
            yield {c.ID: None if ident is None else f"{r.get('data_source')}/{ident}", c.CONTEXT: _messages(r.get("prompt")),
                   c.RESPONSES: r.get("responses"), c.LABELS: r.get("labels"), SUBSET: _str(r.get("ability")),
                   DATA_SOURCE: _str(r.get("data_source")), REFERENCE: _str(rm.get("ground_truth"))}
    else:
        raise TribunalError(f"unknown layout {layout!r}; layouts known: {', '.join(LAYOUTS)}")


def raw_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as ``RAW``; values of the wrong type become nulls the validator quarantines with a reason."""
    fixed = []
    for r in rows:
        labels = r.get(c.LABELS)
        if isinstance(labels, list):
            labels = [float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None for x in labels]
        resp = r.get(c.RESPONSES)
        if isinstance(resp, list):
            resp = [x if isinstance(x, str) else None for x in resp]
        elif resp is not None:
            resp = None
        ctx = r.get(c.CONTEXT)
        if isinstance(ctx, list):
            ctx = [{c.ROLE: m[c.ROLE] if isinstance(m[c.ROLE], str) else None, c.CONTENT: m[c.CONTENT] if isinstance(m[c.CONTENT], str) else None} for m in ctx]
        fixed.append({**r, c.LABELS: labels if isinstance(labels, list) else None, c.RESPONSES: resp, c.CONTEXT: ctx})
    return pa.Table.from_pylist(fixed, schema=RAW)
