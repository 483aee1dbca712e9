"""Reading a config: YAML (with each key's line remembered) or a dict into a checked Config."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import yaml

from thresher.config.build import Where, build
from thresher.config.schema import (
    DEFAULT_CONFIG_NAME,
    DEFAULT_CONFIG_PATH,
    Config,
    ConfigError,
)
from thresher.config.validate import check_config


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def _record_lines(node: yaml.Node, path: tuple, lines: dict) -> None:
    """Remember the 1-based line of every key path below `node`."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            _record_lines(value_node, (*path, key_node.value), lines)
            lines[(*path, key_node.value)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, value_node in enumerate(node.value):
            _record_lines(value_node, (*path, i), lines)


def _parse_yaml(text: str, file: str) -> tuple[Any, Where]:
    try:
        data = yaml.load(text, Loader=_Loader)
        node = yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    if data is None:  # nothing but comments: the schema's defaults are no run anyone asked for
        raise ConfigError(
            f"config file {file!r} is empty; write the sections to change (see examples/) "
            "or omit the file to run the built-in default")
    lines: dict = {}
    _record_lines(node, (), lines)
    return data, Where(file, lines)


def load_config(source: str | os.PathLike | dict | Config | None = None, *,
                source_file: str | None = None) -> Config:
    """Build a Config from a YAML path, a dict, an existing Config, or None (the default run).

    `source_file` is the config file a dict came from (a run's run.json records it): its
    relative input paths are then checked and read from that file's folder, not the cwd."""
    if isinstance(source, Config):
        return source
    if source is None or source == DEFAULT_CONFIG_NAME:
        source = DEFAULT_CONFIG_PATH
    if isinstance(source, dict):
        return validate(source, Where(None, {}), source_file=source_file)
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass a YAML file "
            "(see examples/) or omit it to run the built-in default"
        )
    data, where = _parse_yaml(path.read_text(), str(path))
    return validate(data, where)


def validate(data: Any, where: Where, source_file: str | None = None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{where.at(())} must be a mapping of sections, got {data!r}")
    cfg = build(Config, _sources_as_list(data, where), (), where)
    source_file = where.file or source_file
    if source_file:  # before the checks: relative input paths are relative to this file
        cfg = dataclasses.replace(cfg, source_file=str(Path(source_file).resolve()))
    check_config(cfg, where)
    return cfg


def _sources_as_list(data: dict, where: Where) -> dict:
    """`source:` becomes a one-item `sources:`; unnamed sources are named s0, s1, ..."""
    data = dict(data)
    if "source" in data and "sources" in data:
        raise ConfigError(f"{where.at(('sources',))}: give `source` (one stream) or `sources` (a "
                          "list of streams), not both")
    if "sources" not in data:
        data["sources"] = [data.pop("source", {})]
        where.single_source = True
    if not isinstance(data["sources"], list) or not data["sources"]:
        raise ConfigError(f"{where.at(('sources',))} must be a non-empty list of sources, got "
                          f"{data['sources']!r}")
    named = []
    for i, source in enumerate(data["sources"]):
        if isinstance(source, dict) and not source.get("name"):
            source = {**source, "name": f"s{i}"}
        named.append(source)
    data["sources"] = named
    return data

