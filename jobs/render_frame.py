"""The GRM and meta-RM prompts rendered column-wise in polars, identical to ``jobs.protocol``.

The reducers render millions of prompts; doing it per row in Python would dominate their run
time. Templates are split once into literal pieces and placeholders (the same one-pass
substitution as ``protocol._fill``), and each row is assembled with polars string expressions.
``tests/jobs/test_render_frame.py`` checks equality with the row-wise renderer.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import polars as pl

from jobs.protocol import _ROLE_NAMES, METARM_PREAMBLE, Template
from schemas import columns as c

if TYPE_CHECKING:
    import pyarrow as pa

_LETTERS = {i: chr(ord("A") + i - 1) for i in range(1, 27)}


def _pieces(pattern: str, names: tuple[str, ...]) -> list[tuple[bool, str]]:
    """``pattern`` as (is_placeholder, text) pieces, in order."""
    parts = re.split(r"\{(" + "|".join(map(re.escape, names)) + r")\}", pattern)
    return [(i % 2 == 1, p) for i, p in enumerate(parts) if p or i % 2 == 1]


def _assemble(pattern: str, values: dict[str, pl.Expr]) -> pl.Expr:
    exprs = [values[text] if is_name else pl.lit(text) for is_name, text in _pieces(pattern, tuple(values))]
    return pl.concat_str(exprs) if exprs else pl.lit("")


def context_text() -> pl.Expr:
    """``protocol.render_context`` of the ``context`` column."""
    role = pl.element().struct.field(c.ROLE)
    name = role.replace_strict(_ROLE_NAMES, default=role.str.to_titlecase(), return_dtype=pl.String)
    turn = pl.concat_str([name, pl.lit(": "), pl.element().struct.field(c.CONTENT).fill_null("")])
    return pl.col(c.CONTEXT).list.eval(turn).list.join("\n\n")


def _view_blocks(block: str, separator: str) -> pl.Expr:
    """The responses in view order (``permutation``), each rendered with ``block``, joined."""
    index = (pl.int_range(pl.len()) + 1).cast(pl.Int64)
    letter = index.replace_strict(_LETTERS, default="?", return_dtype=pl.String)
    rendered = _assemble(block, {"i": index.cast(pl.String), "letter": letter, "response": pl.element()})
    return pl.col(c.RESPONSES).list.gather(pl.col(c.PERMUTATION)).list.eval(rendered).list.join(separator)


def grm_prompt(template: Template) -> pl.Expr:
    """The un-hinted GRM user turn (``protocol.render_prompt`` in view order)."""
    responses = _view_blocks(template.response_block, template.response_separator)
    return _assemble(template.body, {"context": context_text(), "responses": responses})


def metarm_prompt() -> pl.Expr:
    """``protocol.render_metarm_prompt`` in view order."""
    blocks = _view_blocks("[The Begin of Response {i}]\n{response}\n[The End of Response {i}]", "\n")
    return pl.concat_str(
        [pl.lit(f"{METARM_PREAMBLE}\n#### Conversation Context ####\n"), context_text(),
         pl.lit("\n#### Responses to be Scored ####\n"), blocks]
    )


def chat_array(turns: list[tuple[str, pa.Array]]):
    """A list<struct<role, content>> Arrow array with one chat per row from (role, contents) pairs.

    The turns of a row are joined element-wise into one buffer, which already is the contents
    column in row-major order (row 0 turn 0, row 0 turn 1, ...): only new offsets are computed.
    No per-string gather, which on prompts of kilobytes was the slowest step of ``rft-filter``.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from schemas import arrow

    rows, width = len(turns[0][1]), len(turns)
    parts = [pc.fill_null(a, "").cast(pa.large_string()) for _, a in turns]
    joined = pc.binary_join_element_wise(*parts, pa.scalar("", pa.large_string())) if width > 1 else parts[0]
    joined = joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
    lengths = np.stack([pc.binary_length(a).to_numpy(zero_copy_only=False) for a in parts], axis=1).astype(np.int64)
    # Where row 0 starts in the data buffer (a sliced array does not start at byte 0).
    base = int(np.frombuffer(joined.buffers()[1], dtype=np.int64)[joined.offset]) if rows else 0
    offsets = base + np.concatenate([[0], np.cumsum(lengths.ravel())]).astype(np.int64)
    contents = pa.LargeStringArray.from_buffers(rows * width, pa.py_buffer(offsets), joined.buffers()[2]).cast(pa.string())
    roles = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(np.arange(width, dtype=np.int32), rows)), pa.array([r for r, _ in turns], pa.string())
    ).cast(pa.string())
    values = pa.StructArray.from_arrays([roles, contents], fields=list(arrow.MESSAGE))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32)), values)
