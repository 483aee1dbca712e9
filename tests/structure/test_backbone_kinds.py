"""A backbone kind is one unit: nothing outside its own module tests which kind a source has.

Checked on the source, as tests/structure/test_layering.py checks imports: a comparison with a
kind's name (`backbone.kind == "open_clip"`, `kind in ("hf_text", ...)`, `case "stored":`), a
comparison of a `backbone.kind`, or a table keyed by kind names, anywhere in the package except
the kind's own module (its settings' `implementation`) and the modality specs that declare the
kinds (thresher/modalities/<m>/spec.py). A kind's behaviour is asked of its class instead.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.paths import PACKAGE
from thresher.config import backbone_kinds


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def allowed_modules() -> set[str]:
    """Each kind's own module, and the specs that declare the kinds."""
    own = {settings.implementation.partition(":")[0] for settings in backbone_kinds().values()}
    specs = {settings.__module__ for settings in backbone_kinds().values()}
    return own | specs


def _names(node: ast.AST, kinds: set[str]) -> list[str]:
    """The kind names a node spells out: a string, or strings in a tuple, list or set."""
    if isinstance(node, ast.Constant) and node.value in kinds:
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [n for item in node.elts for n in _names(item, kinds)]
    return []


def _is_backbone_kind(node: ast.AST) -> bool:
    """`<...>.backbone.kind` (or `backbone.kind`)."""
    if not (isinstance(node, ast.Attribute) and node.attr == "kind"):
        return False
    owner = node.value
    return (isinstance(owner, ast.Attribute) and owner.attr == "backbone") or (
        isinstance(owner, ast.Name) and owner.id == "backbone")


def kind_tests(source: str, kinds: set[str]) -> list[str]:
    """'line N: what' for each place the source tells kinds apart."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = [n for operand in operands for n in _names(operand, kinds)]
            if named or any(_is_backbone_kind(operand) for operand in operands):
                found.append(f"line {node.lineno}: compares a backbone kind "
                             f"{', '.join(named) or '(backbone.kind)'}")
        elif isinstance(node, ast.MatchValue) and _names(node.value, kinds):
            found.append(f"line {node.lineno}: matches the kind {_names(node.value, kinds)[0]}")
        elif isinstance(node, ast.Dict):
            keyed = [n for key in node.keys if key is not None for n in _names(key, kinds)]
            if keyed:
                found.append(f"line {node.lineno}: a table keyed by the kinds "
                             f"{', '.join(keyed)}")
    return found


def violations(sources: dict[str, str]) -> list[str]:
    kinds, allowed = set(backbone_kinds()), allowed_modules()
    return [f"{module} {problem}" for module, source in sorted(sources.items())
            if module not in allowed for problem in kind_tests(source, kinds)]


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_no_module_tells_backbone_kinds_apart_outside_the_kind() -> None:
    sources = package_sources()
    assert "thresher.modalities.image.decode" in sources
    assert violations(sources) == []


@pytest.mark.parametrize(("module", "line"), [
    ("thresher.modalities.image.report", "crop = source.backbone.kind == 'open_clip'\n"),
    ("thresher.config.plan", "def f(source):\n    return source.backbone.kind != 'x'\n"),
    ("thresher.modalities.text.splice", "usable = kind in ('hf_text', 'transformer_lens')\n"),
    ("thresher.config.validate", "RULES = {'stored': None}\n"),
    ("thresher.analysis.evaluate",
     "def f(kind):\n    match kind:\n        case 'synthetic':\n            return 1\n"),
])
def test_a_kind_test_outside_the_kind_is_named(module: str, line: str) -> None:
    sources = package_sources()
    sources[module] = sources[module] + "\n" + line
    assert any(v.startswith(f"{module} line") for v in violations(sources)), violations(sources)


def test_a_kind_may_name_itself_in_its_own_module() -> None:
    sources = package_sources()
    own = backbone_kinds()["open_clip"].implementation.partition(":")[0]
    sources[own] = sources[own] + "\nSELF = 'open_clip' == 'open_clip'\n"
    assert violations(sources) == []
