"""YAML to typed dataclasses: each value converted to its field's type, or a ConfigError naming
the key path, the file and line, and the valid choices. Generic: it knows no section."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from thresher.config.errors import ConfigError


@dataclass
class Where:
    """Where each key path sits in the YAML file, for error messages."""

    file: str | None
    lines: dict[tuple[str | int, ...], int]
    # The config wrote `source:` (one stream), held as sources[0]: name it as written.
    single_source: bool = False

    def at(self, path: tuple[str | int, ...]) -> str:
        if self.single_source and path[:2] == ("sources", 0):
            path = ("source", *path[2:])
        name = ".".join(str(p) for p in path) or "<top>"
        where = f"`{name}`"
        if self.file:
            line = self.lines.get(path)
            where += f" ({self.file}:{line})" if line else f" ({self.file})"
        return where



def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _build_variant(tp: Any, table: dict[str, type], value: Any, path: tuple,
                   where: Where) -> Any:
    """A tagged union: the mapping's `kind` names the dataclass that reads the other keys
    (`tp.variants()`; `tp.default_variant()` where the mapping names none)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where.at(path)} must be a mapping, got {value!r}")
    tag = value.get("kind", tp.default_variant())
    if tag not in table:
        close = difflib.get_close_matches(str(tag), list(table), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"{where.at((*path, 'kind'))} is {tag!r}{hint} Valid choices: "
                          f"{' | '.join(repr(t) for t in table)}")
    variant = table[tag]
    # A class of one kind fixes its `kind`; a class of several takes it as a field.
    takes_kind = any(f.name == "kind" and f.init for f in dataclasses.fields(variant))
    rest = {k: v for k, v in value.items() if k != "kind" or takes_kind}
    return build(variant, rest, path, where)


def build(tp: Any, value: Any, path: tuple, where: Where) -> Any:
    """Convert `value` to type `tp`, or raise a ConfigError naming path, file:line and choices."""
    origin = get_origin(tp)
    variants = getattr(tp, "variants", None)
    table = variants() if callable(variants) else None
    if table is not None:
        return _build_variant(tp, table, value, path, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where.at(path)} must be a mapping, got {value!r}")
        hints = typing.get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp) if f.init and f.name != "source_file"}
        for key in value:
            if key not in fields:
                close = difflib.get_close_matches(str(key), fields, n=1)
                hint = f"; did you mean `{close[0]}`?" if close else ""
                raise ConfigError(
                    f"unknown key {where.at((*path, key))}{hint} "
                    f"Valid keys here: {', '.join(fields)}"
                )
        kwargs = {k: build(hints[k], v, (*path, k), where) for k, v in value.items()}
        return tp(**kwargs)
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where.at(path)} is {value!r}{hint} Valid choices: {type_name(tp)}"
            )
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return build(arg, value, path, where)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"{where.at(path)} must be {type_name(tp)}, got {value!r}"
        )
    if origin is tuple:
        (item_tp, _ellipsis) = get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where.at(path)} must be a list, got {value!r}")
        return tuple(build(item_tp, v, (*path, i), where) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where.at(path)} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where.at(path)} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where.at(path)} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where.at(path)} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where.at(path)} must be a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"config type {tp!r} at {path} is not supported")  # a bug in this module

