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

    Built with Arrow offsets and one ``take`` rather than polars' ``concat_list`` of structs,
    which is several times slower on long strings.
    """
    import numpy as np
    import pyarrow as pa

    from schemas import arrow

    rows, width = len(turns[0][1]), len(turns)
    contents = pa.concat_arrays([a.cast(pa.string()) for _, a in turns])
    order = np.arange(rows * width).reshape(width, rows).T.ravel()  # row-major: turn 0, turn 1, ...
    roles = pa.array(np.tile(np.array([r for r, _ in turns], dtype=object), rows), pa.string())
    values = pa.StructArray.from_arrays([roles, contents.take(pa.array(order))], fields=list(arrow.MESSAGE))
    offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)
