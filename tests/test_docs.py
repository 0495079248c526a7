"""The README and the reference pages name only commands and flags that exist, and links that resolve.

Every ``tribunal CMD ... --flag`` (and ``python -m tribunal.jobs.X ...``) in a code block or an
inline code span must be a command of ``tribunal.jobs.cli.COMMANDS`` whose parser accepts each
flag. A bare ``--flag`` span is checked against the command its section is about (a heading that
is a command's name, or holds ``tribunal CMD`` in code), and elsewhere against every command: a
flag of another tool is written with that tool's name (``ray job submit --working-dir``). Commands
built from a config class are checked against ``cli.build_parser()``; ``train``, ``recipe`` and
``build-tiny-model`` parse their own argv, so their flags are read from the help text they print
(``tribunal train sft --help``), unless their module exposes a ``build_parser()``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tribunal.jobs import cli

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_LIMIT = 20_000  # bytes: the README is a front door; the reference lives in docs/
OTHER_SCRIPTS = {"bench"}  # folders whose README is mostly about their own scripts' flags


def doc_files() -> list[Path]:
    """The README, docs/ and the README of each top-level folder (cluster/, bench/, ...)."""
    docs = sorted((ROOT / "docs").rglob("*.md"))
    folders = sorted(p for p in ROOT.glob("*/README.md") if not p.parent.name.startswith(".") and p not in docs)
    return [README, *docs, *folders]


# --- reading the markdown ---------------------------------------------------------------------

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
SPAN = re.compile(r"(`+)(.+?)\1", re.S)  # an inline code span; it may wrap across lines
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@dataclass(frozen=True)
class Mention:
    line: int
    text: str
    inline: bool
    section: tuple[str, str | None] | None  # the command (and task word) the section is about


def _blocks(markdown: str):
    """(first line number, text, is_code): fenced code blocks one by one, prose in runs between."""
    prose: list[str] = []
    code: list[str] | None = None
    start = 1
    for n, line in enumerate(markdown.splitlines(), 1):
        if FENCE.match(line):
            if code is None:
                if prose:
                    yield start, "\n".join(prose), False
                code, start, prose = [], n + 1, []
            else:
                yield start, "\n".join(code), True
                code, start = None, n + 1
            continue
        (code if code is not None else prose).append(line)
    if code is not None:
        yield start, "\n".join(code), True
    elif prose:
        yield start, "\n".join(prose), False


def _own_argv(command: str) -> bool:
    """A command that parses its own argv (``train``, ``recipe``, ``build-tiny-model``)."""
    return cli.COMMANDS[command][1] is None


def _heading_command(title: str) -> tuple[str, str | None] | None:
    for span in SPAN.findall(title):
        found = invocations(span[1])
        if found:
            return found[0][0], found[0][1]
    words = re.sub(r"`", "", title).split()
    if len(words) == 1 and words[0] in cli.COMMANDS:
        return words[0], None
    if len(words) == 2 and words[0] in cli.COMMANDS and _own_argv(words[0]):
        return words[0], words[1]
    return None


def mentions(markdown: str) -> list[Mention]:
    """Every code-block command line and inline code span, with the command its section is about."""
    out: list[Mention] = []
    stack: list[tuple[int, tuple[str, str | None] | None]] = []  # (heading level, command) per open heading
    for start, text, is_code in _blocks(markdown):
        lines = text.splitlines()
        if is_code:
            pending, first = "", start
            for n, line in enumerate(lines, start):
                first = n if not pending else first
                if line.rstrip().endswith("\\"):  # a shell line continues on the next one
                    pending += line.rstrip()[:-1] + " "
                    continue
                out.append(Mention(first, pending + line, False, None))
                pending = ""
            continue
        paragraph: list[str] = []  # code spans never cross a blank line or a heading
        for n, line in enumerate([*lines, ""], start):
            h = HEADING.match(line)
            if line.strip() and not h:
                paragraph.append(line)
                continue
            section = next((cmd for _, cmd in reversed(stack) if cmd is not None), None)
            body = "\n".join(paragraph)
            first = n - len(paragraph)
            for m in SPAN.finditer(body):
                out.append(Mention(first + body.count("\n", 0, m.start()), m.group(2).replace("\n", " "), True, section))
            paragraph = []
            if h:
                level = len(h.group(1))
                while stack and stack[-1][0] >= level:
                    stack.pop()
                stack.append((level, _heading_command(h.group(2))))
    return out


# --- reading a command line -------------------------------------------------------------------

FLAG = re.compile(r"^--[A-Za-z0-9][\w-]*")


def _module_commands() -> dict[str, str]:
    return {module: name for name, (module, _, _) in cli.COMMANDS.items()}


def _clean(token: str) -> str:
    return token.strip("[]()'\",;")


def invocations(shell: str) -> list[tuple[str, str | None, list[str]]]:
    """(command, task word, flags) for each tribunal invocation in a line of shell or a code span.

    ``tribunal CMD [WORD] --flag ...`` (also ``.venv/bin/tribunal``) and ``python -m
    tribunal.jobs.X ...``; a placeholder (``tribunal CMD``) and a message line (``tribunal sample:
    error: ...``) are not invocations."""
    shell = re.sub(r"(^|\s)#.*$", "", shell, flags=re.M)  # comments
    found = []
    modules = _module_commands()
    for segment in re.split(r"&&|\|\||[;|]", shell):
        tokens = [_clean(t) for t in segment.split()]
        tokens = [t for t in tokens if t]
        for i, token in enumerate(tokens):
            if token == "tribunal" or token.endswith("/tribunal"):
                rest = tokens[i + 1 :]
                while rest and rest[0] in ("--debug",):  # the top-level parser's own flags
                    rest = rest[1:]
                if not rest or rest[0].endswith(":") or rest[0].isupper() or rest[0].startswith("-"):
                    break
                command, rest = rest[0], rest[1:]
            elif token == "-m" and i + 1 < len(tokens) and tokens[i + 1] in modules:
                command, rest = modules[tokens[i + 1]], tokens[i + 2 :]
            else:
                continue
            word = rest[0] if rest and not rest[0].startswith("-") and command in cli.COMMANDS and _own_argv(command) else None
            flags = [FLAG.match(t).group(0) for t in rest if FLAG.match(t)]
            found.append((command, word, flags))
            break
    return found


# --- what the commands accept -----------------------------------------------------------------


def _option_strings(parser: argparse.ArgumentParser, word: str | None) -> set[str] | str:
    """The flags of ``parser`` and of its task ``word`` (no word: of any of its tasks), or why
    ``word`` is not one of its tasks."""
    flags = {o for a in parser._actions for o in a.option_strings}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if word is not None and word not in action.choices:
                return f"`{parser.prog} {word} --help` fails: no task {word!r} (tasks: {', '.join(action.choices)})"
            for name, sub in action.choices.items():
                if word in (None, name):
                    flags |= _option_strings(sub, None)
    return flags


@functools.cache
def _job_parsers() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@functools.cache
def accepted_flags(command: str, word: str | None) -> frozenset[str] | str:
    """The flags ``tribunal COMMAND [WORD]`` accepts, or why that is not a command line."""
    if command not in cli.COMMANDS:
        return f"no command {command!r} (commands: {', '.join(cli.COMMANDS)})"
    top = {"--debug", "--help", "-h"}
    if not _own_argv(command):
        return frozenset(_option_strings(_job_parsers()[command], None) | top)
    builder = getattr(importlib.import_module(cli.COMMANDS[command][0]), "build_parser", None)
    if builder is not None:
        found = _option_strings(builder(), word)
        return found if isinstance(found, str) else frozenset(found | top)
    argv = [sys.executable, "-m", "tribunal.jobs.cli", command, *([word] if word else []), "--help"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    if r.returncode != 0:
        return f"`tribunal {command} {word or ''} --help` fails: {(r.stderr.strip().splitlines() or [''])[-1]}"
    return frozenset(set(re.findall(r"(?<![\w-])--[A-Za-z0-9][\w-]*", r.stdout)) | top)


def _all_flags() -> set[str]:
    flags: set[str] = set()
    for command in cli.COMMANDS:
        accepted = accepted_flags(command, None)
        if not isinstance(accepted, str):
            flags |= accepted
    return flags


def problems(markdown: str, where: str = "<text>", bare_flags: bool = True) -> list[str]:
    """Every command or flag the markdown names that tribunal does not have. ``bare_flags``: also
    check ``--flag`` spans outside a command's section (off for pages about other scripts' flags,
    such as bench/README.md)."""
    out = []
    for m in mentions(markdown):
        checks = [(cmd, word, flags, f"tribunal {cmd}") for cmd, word, flags in invocations(m.text)]
        if not checks and m.inline and m.text.startswith("--"):
            flags = [FLAG.match(_clean(t)).group(0) for t in m.text.split() if FLAG.match(_clean(t))]
            if m.section is not None:
                checks = [(m.section[0], m.section[1], flags, f"tribunal {m.section[0]} (this section's command)")]
            elif bare_flags:
                unknown = [f for f in flags if f not in _all_flags()]
                out += [f"{where}:{m.line}: `{m.text}`: no tribunal command has {f}" for f in unknown]
        for cmd, word, flags, what in checks:
            accepted = accepted_flags(cmd, word)
            if isinstance(accepted, str):
                out.append(f"{where}:{m.line}: `{m.text}`: {accepted}")
                continue
            out += [f"{where}:{m.line}: `{m.text}`: {what} has no {f}" for f in flags if f not in accepted]
    return out


# --- links ------------------------------------------------------------------------------------


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, text, is_code in _blocks(markdown):
        if is_code:
            continue
        for line in text.splitlines():
            h = HEADING.match(line)
            if h:
                base = slug(h.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                out.add(base if n == 0 else f"{base}-{n}")
    return out


def link_problems(markdown: str, base: Path, where: str = "<text>") -> list[str]:
    """Every relative link (and its #anchor) that points at nothing."""
    out = []
    for _, text, is_code in _blocks(markdown):
        if is_code:
            continue
        for target in LINK.findall(SPAN.sub("", text)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
                continue
            path, _, anchor = target.partition("#")
            file = (base / path).resolve() if path else None
            if file is not None and not file.exists():
                out.append(f"{where}: link {target}: no {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
                continue
            if anchor and (file is None or file.suffix == ".md"):
                text_of = markdown if file is None else file.read_text()
                if anchor not in anchors(text_of):
                    out.append(f"{where}: link {target}: no heading #{anchor}")
    return out


# --- the tests --------------------------------------------------------------------------------


def test_readme_is_a_front_door():
    size = len(README.read_bytes())
    assert size < README_LIMIT, f"README.md is {size} bytes: move reference text to docs/ (limit {README_LIMIT})"


def test_readme_names_every_command():
    text = README.read_text()
    named = {cmd for m in mentions(text) for cmd, _, _ in invocations(m.text)}
    assert set(cli.COMMANDS) <= named, f"commands without an example in README.md: {sorted(set(cli.COMMANDS) - named)}"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_command_prints_its_help(command):
    # The README sends readers to `tribunal CMD --help` for the full list of options.
    if _own_argv(command):
        assert not isinstance(accepted_flags(command, None), str), accepted_flags(command, None)
    else:
        assert "--" in _job_parsers()[command].format_help()


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_and_flag_named_exists(path):
    bare_flags = path.parent.name not in OTHER_SCRIPTS
    assert problems(path.read_text(), str(path.relative_to(ROOT)), bare_flags) == []


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert link_problems(path.read_text(), path.parent, str(path.relative_to(ROOT))) == []


def test_the_checks_catch_what_they_are_for(tmp_path):
    assert problems("```bash\ntribunal sample --input x --k 4\n```\n") == []
    assert problems("```bash\ntribunal sample --input x \\\n    --temprature 0.5\n```\n") == [
        "<text>:2: `tribunal sample --input x      --temprature 0.5`: tribunal sample has no --temprature"
    ]
    assert problems("Run `tribunal smaple --k 4`.") == [
        f"<text>:1: `tribunal smaple --k 4`: no command 'smaple' (commands: {', '.join(cli.COMMANDS)})"
    ]
    # A bare flag is checked against its section's command, and anywhere against every command.
    assert problems("## vote\n\nUse `--k-meta 2`.\n") == []
    assert problems("## vote\n\nUse `--k-metta 2`.\n") == ["<text>:3: `--k-metta 2`: tribunal vote (this section's command) has no --k-metta"]
    assert problems("## sample\n\nSee `--hint auto`.\n") != []
    assert problems("Elsewhere `--no-such-flag`.") == ["<text>:1: `--no-such-flag`: no tribunal command has --no-such-flag"]
    assert problems("`ray job submit --working-dir .`, `tribunal sample: error: ...`, `tribunal CMD --help`") == []
    # Commands with their own argv: flags and the task word come from what they accept.
    assert problems("`tribunal train metarm --holdout 0.1`, `python -m tribunal.training.tiny_model --output d`") == []
    assert problems("`tribunal train sft --holdut 0.1`")[0].endswith("tribunal train has no --holdut")
    assert "fails" in problems("`tribunal train sfx --lr 1`")[0]
    assert problems("`python -m tribunal.jobs.vote --kk 2`")[0].endswith("tribunal vote has no --kk")
    # Links: a missing file and a missing heading.
    (tmp_path / "a.md").write_text("# A\n\n## Some part\n")
    good = "[a](a.md), [part](a.md#some-part), [here](#b), [web](https://example.com/x)\n\n# B\n"
    assert link_problems(good, tmp_path) == []
    assert link_problems("[x](b.md) and [y](a.md#other)", tmp_path) == [
        f"<text>: link b.md: no {tmp_path / 'b.md'}",
        "<text>: link a.md#other: no heading #other",
    ]
