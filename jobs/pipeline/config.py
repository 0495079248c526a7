"""Typed job configs: frozen dataclasses whose fields carry a one-line help; YAML and flags fill them.

``opt(default, "help")`` declares a field. ``add_arguments`` turns fields into ``--flags``;
``load_config`` merges a YAML file and the flags the user actually gave (flags win), checks each
value against its field's type (``int``, ``float``, ``bool``, ``str``, ``X | None``, ``list[X]``),
then builds the dataclass, whose ``__post_init__`` checks values and names the offending key. Every
mistake in a config file is one line naming the file, the line or key, and what was expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any

from tribunal.schemas.errors import TribunalError


def opt(default: Any, help: str, **kw: Any) -> Any:
    """A config field with its one-line meaning (and units)."""
    meta = {"help": help, **kw}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: default, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> Any:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if args else str
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        if default not in (None, "", dataclasses.MISSING) and tp is not bool:
            help_text += f" (default: {default})"
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text}
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        else:
            parser.add_argument(flag, type=flag_type(tp), metavar=f.name.upper(), **kw)


def flag_type(tp: Any):
    """argparse's ``type=`` for a field type: a bad value reads ``argument --k: expected an
    integer, got 'four'``, the words a config file's mistake gets."""
    if tp is str:
        return str

    def convert(text: str) -> Any:
        try:
            return coerce(text, tp)
        except _Mismatch:
            raise argparse.ArgumentTypeError(f"expected {_expected(tp)}, got {text!r}") from None

    convert.__name__ = getattr(tp, "__name__", "value")
    return convert


_EXPECTED = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _expected(tp: Any) -> str:
    """How a type reads in an error: ``an integer``, ``a list of numbers``, ``a string or null``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        # X | None reads as X: None is the default, not what a user means to write
        return " or ".join(_expected(a) for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (str,)
        return f"a list of {_expected(inner).removeprefix('an ').removeprefix('a ')}s"
    return _EXPECTED.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    pass


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp``, or ``_Mismatch``. Lenient only where a config file is: a number
    written as text (YAML reads ``1e-5`` as a string) is a number, and a number where text is
    expected is that text; never a bool for a number or a number for a bool."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in (a for a in args if a is not type(None)):
            try:
                return coerce(value, a)
            except _Mismatch:
                pass
        raise _Mismatch
    if typing.get_origin(tp) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, inner) for v in value]
        return tuple(items) if typing.get_origin(tp) is tuple else items
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise _Mismatch
    return value  # a type this checker does not know: the dataclass checks it


def command_name(cls: type) -> str:
    """The command a config class belongs to, for messages: ``VoteConfig`` -> ``vote``."""
    import re

    name = cls.__name__.removesuffix("Config")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", name).lower()


def read_yaml(path: str) -> dict[str, Any]:
    """A config file's mapping; one line naming the file (and the line) when it is not one."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as e:
        raise TribunalError(f"cannot read config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{path}, line {mark.line + 1}" if mark is not None else path
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TribunalError(f"{where}: {what}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TribunalError(f"{path}: a config file must be a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(cls: type, args: argparse.Namespace | None = None, yaml_path: str | None = None, *, command: str | None = None, **overrides: Any):
    """Build ``cls`` from YAML (if any), then flags given on the command line, then overrides.

    ``command`` names the job in messages (default: ``args.command``, else from the class name).
    """
    import difflib

    values: dict[str, Any] = {}
    origin: dict[str, str] = {}  # where each value came from, for messages
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    command = command or getattr(args, "command", None) or command_name(cls)
    if yaml_path:
        for key, value in read_yaml(yaml_path).items():
            key = str(key).replace("-", "_")
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; `tribunal {command} --help` lists the options"
                raise TribunalError(f"{yaml_path}: unknown key {key!r} for {command}{hint}")
            values[key], origin[key] = value, f"{yaml_path}: key {key!r}"
    if args is not None:
        for name in names:
            v = getattr(args, name, None)
            if v is not None:
                values[name], origin[name] = v, "--" + name.replace("_", "-")
    for k, v in overrides.items():
        if v is not None:
            values[k], origin[k] = v, f"config key {k!r}"
    for key, value in values.items():
        if key not in hints:
            continue
        try:
            values[key] = coerce(value, hints[key])
        except _Mismatch:
            raise TribunalError(f"{origin[key]}: expected {_expected(hints[key])}, got {value!r}") from None
    try:
        return cls(**values)
    except TypeError as e:
        raise TribunalError(f"{command}: {e}") from None
    except ValueError as e:
        raise TribunalError(str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def check(cond: bool, key: str, message: str) -> None:
    """Raise the ValueError a config's ``__post_init__`` uses, naming the key."""
    if not cond:
        raise ValueError(f"config key {key!r}: {message}")
