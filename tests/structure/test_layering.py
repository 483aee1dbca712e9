"""The package layering, checked on the source: stream <- modalities <- harvest, train <-
analysis <- executors, and only thresher.distributed imports ray.

Every import counts, at module level or inside a function: a lazy import is still a
dependency a reader has to follow.
"""

from __future__ import annotations

import ast

import pytest

from tests.package_source import PACKAGE, module_name, source_files

# What each layer must not import (its own package and the layers below it are fine).
EXECUTORS = ("thresher.inline", "thresher.session", "thresher.distributed", "thresher.api",
             "thresher.cli")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # Config is read by every stage and imports none (nor torch: see test_config_package); it
    # reads each modality's torch-free spec.py by name (`spec_violations` below).
    "thresher.config": ("thresher.stream", "thresher.modalities", "thresher.harvest",
                        "thresher.train", "thresher.analysis", *EXECUTORS),
    "thresher.stream": ("thresher.modalities", "thresher.harvest", "thresher.train",
                        "thresher.analysis", *EXECUTORS),
    # A modality's inputs, decoding, backbones and renderer; the harvest loop is above it.
    "thresher.modalities": ("thresher.harvest", "thresher.train", "thresher.analysis",
                            *EXECUTORS),
    "thresher.harvest": ("thresher.train", "thresher.analysis", *EXECUTORS),
    "thresher.train": ("thresher.modalities", "thresher.harvest", "thresher.analysis",
                       *EXECUTORS),
    "thresher.analysis": EXECUTORS,
}
# Known crossings of the layering, each with the way out (none today).
KNOWN: set[tuple[str, str]] = set()


def imports_of(source: str) -> set[str]:
    """Every module a source imports, anywhere in it."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(sources: dict[str, str]) -> list[str]:
    """'module imports target' for each import that breaks the layering."""
    found = []
    for module, source in sorted(sources.items()):
        imported = imports_of(source)
        if not within(module, "thresher.distributed") and any(within(i, "ray") for i in imported):
            found.append(f"{module} imports ray (only thresher.distributed may)")
        for layer, forbidden in FORBIDDEN.items():
            if not within(module, layer):
                continue
            for target in sorted(imported):
                bad = next((f for f in forbidden if within(target, f)), None)
                known = any(module == m and within(target, t) for m, t in KNOWN)
                if bad and not known:
                    found.append(f"{module} imports {target}")
    return found


def spec_violations(sources: dict[str, str]) -> list[str]:
    """A modality's spec.py is read by config (thresher/config/kinds.py): it imports only
    thresher.config and no model library, like config itself."""
    heavy = ("torch", "transformers", "transformer_lens", "open_clip", "pandas", "numpy")
    found = []
    for module, source in sorted(sources.items()):
        if not (within(module, "thresher.modalities") and module.endswith(".spec")):
            continue
        for target in sorted(imports_of(source)):
            own = within(target, "thresher")
            if (own and not within(target, "thresher.config")) or any(
                    within(target, h) for h in heavy):
                found.append(f"{module} imports {target}")
    return found


def test_modality_specs_import_only_config() -> None:
    sources = package_sources()
    assert "thresher.modalities.image.spec" in sources
    assert spec_violations(sources) == []
    sources["thresher.modalities.image.spec"] += "\nimport thresher.modalities.image.kind\n"
    assert spec_violations(sources) == [
        "thresher.modalities.image.spec imports thresher.modalities.image.kind"]


def package_sources() -> dict[str, str]:
    return {module_name(p): p.read_text() for p in source_files()}


def test_the_package_keeps_its_layers() -> None:
    sources = package_sources()
    assert "thresher.stream.pump" in sources and "thresher.distributed.pipeline" in sources
    assert violations(sources) == []


@pytest.mark.parametrize(("module", "line", "expected"), [
    ("thresher.stream.log", "import ray\n", "thresher.stream.log imports ray"),
    ("thresher.stream.pump", "def f():\n    from thresher.train.trainer import Trainer\n",
     "thresher.stream.pump imports thresher.train.trainer"),
    ("thresher.harvest.inputs", "from thresher.distributed import pipeline\n",
     "thresher.harvest.inputs imports thresher.distributed"),
    ("thresher.analysis.stats", "from thresher.inline import run_inline\n",
     "thresher.analysis.stats imports thresher.inline"),
    ("thresher.modalities.text.windows", "from thresher.harvest.local import LocalHarvest\n",
     "thresher.modalities.text.windows imports thresher.harvest.local"),
])
def test_a_wrong_import_fails_the_check(module: str, line: str, expected: str) -> None:
    sources = package_sources()
    sources[module] = sources[module] + "\n" + line
    assert any(v.startswith(expected) for v in violations(sources))


def test_the_stream_actor_starts_without_torch_or_pandas() -> None:
    """The Ray stream actor lists inputs and moves refs, never a row: its process imports no
    torch, model library or pandas (each new actor process pays ~10 s on two cores for them;
    modalities load backbones and renderers lazily, thresher/modalities/contract.py `lazy`)."""
    import subprocess
    import sys

    code = ("import sys, thresher.distributed.stream_actor, thresher.harvest.inputs, "
            "thresher.modalities.registry\n"
            "heavy = ('torch', 'pandas', 'transformers', 'transformer_lens', 'open_clip')\n"
            "print(' '.join(m for m in heavy if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=PACKAGE.parent)
    assert out.stdout.strip() == ""


def classes_in_functions(source: str) -> list[str]:
    """'function.Class' for each class defined inside a function (or a method)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            found += [f"{node.name}.{inner.name}" for inner in ast.walk(node)
                      if isinstance(inner, ast.ClassDef)]
    return found


def test_no_class_is_defined_inside_a_function() -> None:
    """Classes live at module level, where readers, type checkers and tests can reach them;
    the Ray actors are plain classes given to `ray.remote` where they start."""
    found = {module: inner for module, source in package_sources().items()
             if (inner := classes_in_functions(source))}
    assert found == {}
    factory = "def actor_cls():\n    @ray.remote\n    class Actor:\n        pass\n"
    assert classes_in_functions(factory) == ["actor_cls.Actor"]
