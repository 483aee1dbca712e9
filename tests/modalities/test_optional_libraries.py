"""The libraries of an extra: each kind declares the modules it imports beyond thresher's core
and the extra that installs them (`requires` in thresher/modalities/<m>/spec.py); pyproject.toml
must hold that extra with a distribution of the module, and a config whose kind lacks its
library fails at plan time with one line naming the key, the kind, the module and the install.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement as Dependency
from packaging.utils import canonicalize_name

import thresher
from tests.paths import ROOT
from thresher import cli
from thresher.config import ConfigError, backbone_kinds, load_config, modality_specs
from thresher.config.kinds import Requirement
from thresher.harvest.to_store import harvest_to_store
from thresher.modalities.eeg.recordings import spkit_eeg_sample

from ..package_source import module_name, source_files

PYPROJECT = ROOT / "pyproject.toml"
# Imported by thresher but in no kind's `requires`, each with why that is right.
UNDECLARED = {
    # run.wandb without wandb installed logs a warning and the run goes on
    # (thresher/analysis/wandb_log.py).
    "wandb",
}


def project() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)["project"]


def distributions(specs: list[str]) -> set[str]:
    """The distributions a list of dependency specifiers names (thresher's own extras left
    out)."""
    names = {canonicalize_name(Dependency(spec).name) for spec in specs}
    return names - {"thresher"}


def declared() -> list[tuple[str, Requirement]]:
    """(what needs it, requirement) for every backbone kind and every input kind."""
    found = [(f"backbone.kind {kind}", requirement)
             for kind, settings in sorted(backbone_kinds().items())
             for requirement in settings.requires]
    for spec in modality_specs().values():
        if spec.inputs_config is not None:
            assert set(spec.inputs_config.requires) <= set(spec.inputs), spec.name
            found += [(f"inputs.kind {kind}", requirement) for kind in spec.inputs
                      for requirement in spec.inputs_config.requires.get(kind, ())]
    return found


def providers(module: str) -> set[str]:
    return {canonicalize_name(d)
            for d in importlib.metadata.packages_distributions().get(module, [])}


def test_the_suite_declares_libraries_to_check() -> None:
    modules = {requirement.module for _, requirement in declared()}
    assert {"open_clip", "torchvision", "transformer_lens", "pyedflib", "datasets",
            "spkit"} <= modules


@pytest.mark.parametrize(("user", "requirement"), declared(),
                         ids=[f"{user}:{r.module}" for user, r in declared()])
def test_each_declared_library_is_installed_and_its_extra_provides_it(
        user: str, requirement: Requirement) -> None:
    extras = project()["optional-dependencies"]
    assert importlib.util.find_spec(requirement.module) is not None, (
        f"{user} needs {requirement.module}, which the dev environment lacks")
    assert requirement.extra in extras, f"{user}: no extra {requirement.extra!r} in pyproject"
    given = providers(requirement.module)
    assert given & distributions(extras[requirement.extra]), (
        f"{user}: extra {requirement.extra!r} lists none of {sorted(given)}, the "
        f"distributions of {requirement.module}")
    assert not given & distributions(project()["dependencies"]), (
        f"{user}: {requirement.module} is a core dependency; drop the requirement")


def test_all_holds_every_extra_and_dev_holds_all() -> None:
    extras = project()["optional-dependencies"]
    kinds_extras = {requirement.extra for _, requirement in declared()}
    every = Dependency(next(s for s in extras["all"] if s.startswith("thresher["))).extras
    assert every == set(extras) - {"all", "dev"}
    assert kinds_extras <= every
    assert "all" in {extra for spec in extras["dev"] if spec.startswith("thresher[")
                     for extra in Dependency(spec).extras}


def third_party_imports() -> dict[str, set[str]]:
    """{top-level module: the thresher modules importing it}, for every import anywhere in the
    package that is neither the standard library nor thresher."""
    found: dict[str, set[str]] = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top != "thresher" and top not in sys.stdlib_module_names:
                    found.setdefault(top, set()).add(module_name(path))
    return found


def test_every_library_thresher_imports_is_core_or_declared() -> None:
    """A library only a kind needs must be in that kind's `requires`, or a core install breaks
    with a traceback in a worker instead of the plan's line."""
    core = distributions(project()["dependencies"])
    # What the core dependencies themselves require (huggingface_hub, through transformers).
    brought = {canonicalize_name(Dependency(spec).name) for dist in core
               for spec in importlib.metadata.requires(dist) or ()
               if "extra ==" not in spec}
    kinds = {requirement.module for _, requirement in declared()}
    unaccounted = {module: sorted(users) for module, users in third_party_imports().items()
                   if not providers(module) & (core | brought)
                   and module not in kinds and module not in UNDECLARED}
    assert not unaccounted


# --------------------------------------------------------------------------------------------
# The plan's line when a library is missing
# --------------------------------------------------------------------------------------------

TINY_TL = {"n_layers": 1, "d_model": 16, "n_ctx": 32, "d_head": 4, "d_vocab": 50,
           "act_fn": "relu"}
TINY_PATCHTST = {"num_input_channels": 14, "context_length": 64, "patch_length": 16,
                 "patch_stride": 16, "d_model": 16, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "ffn_dim": 32}
TINY_VIT = {"model_type": "vit", "image_size": 32, "patch_size": 16, "hidden_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def source_of(case: str, tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "inputs"
    folder.mkdir(exist_ok=True)
    (folder / "a.edf").write_bytes(b"")
    images = {"kind": "image_folder", "paths": [str(folder)]}
    patchtst = {"kind": "patchtst", "config": TINY_PATCHTST}
    return {
        "open_clip": {"backbone": {"kind": "open_clip", "model": "ViT-B-32"},
                      "hook": "layer.0", "inputs": images},
        "hf_vision": {"backbone": {"kind": "hf_vision", "config": TINY_VIT},
                      "hook": "layer.0", "inputs": images},
        "transformer_lens": {"backbone": {"kind": "transformer_lens", "config": TINY_TL},
                             "hook": "blocks.0.hook_resid_post",
                             "inputs": {"kind": "python_docstrings", "context": 32}},
        "edf": {"backbone": patchtst, "hook": "layer.0",
                "inputs": {"kind": "edf", "paths": [str(folder / "a.edf")], "context": 64}},
        "hf_dataset": {"backbone": {"kind": "hf_vision", "config": TINY_VIT},
                       "hook": "layer.0", "inputs": {"kind": "hf_dataset",
                                                     "paths": [str(folder)]}},
        "spkit_eeg_sample": {"backbone": patchtst, "hook": "layer.0",
                             "inputs": {"kind": "spkit_eeg_sample", "context": 64}},
    }[case]


def hide(monkeypatch: pytest.MonkeyPatch, module: str) -> None:
    """This environment without `module`, as importlib.util.find_spec sees it (the module is
    a library outside the project; already imported or not, it is found no more)."""
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> Any:
        return None if name == module else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


MISSING = [
    ("open_clip", "open_clip", 'source.backbone.kind open_clip needs the open_clip package: '
     'pip install "thresher[vision]"'),
    ("open_clip", "torchvision", 'source.backbone.kind open_clip needs the torchvision '
     'package: pip install "thresher[vision]"'),
    ("hf_vision", "torchvision", 'source.backbone.kind hf_vision needs the torchvision '
     'package: pip install "thresher[vision]"'),
    ("transformer_lens", "transformer_lens", 'source.backbone.kind transformer_lens needs the '
     'transformer_lens package: pip install "thresher[transformer-lens]"'),
    ("edf", "pyedflib", 'source.inputs.kind edf needs the pyedflib package: '
     'pip install "thresher[eeg]"'),
    ("hf_dataset", "datasets", 'source.inputs.kind hf_dataset needs the datasets package: '
     'pip install "thresher[hf-datasets]"'),
    ("spkit_eeg_sample", "spkit", 'source.inputs.kind spkit_eeg_sample needs the spkit '
     'package: pip install "thresher[eeg-sample]" (or `pip install --no-deps spkit` for its '
     'data file alone)'),
]


@pytest.mark.parametrize(("case", "module", "message"), MISSING,
                         ids=[f"{case}-{module}" for case, module, _ in MISSING])
def test_a_missing_library_is_one_line_at_plan_time(
        case: str, module: str, message: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"source": source_of(case, tmp_path)}
    thresher.plan(config)  # plans with the library there
    hide(monkeypatch, module)
    with pytest.raises(ConfigError) as raised:
        thresher.plan(config)
    assert str(raised.value) == message


def test_the_command_line_prints_the_line_alone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"source": source_of("open_clip", tmp_path)}))
    hide(monkeypatch, "open_clip")
    assert cli.main(["plan", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == ("thresher: config error: source.backbone.kind open_clip needs the "
                            'open_clip package: pip install "thresher[vision]"\n')


def test_harvest_says_the_same_before_it_loads_anything(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config({"source": source_of("transformer_lens", tmp_path)})
    hide(monkeypatch, "transformer_lens")
    with pytest.raises(ConfigError) as raised:
        harvest_to_store(cfg, tmp_path / "store")
    assert str(raised.value) == MISSING[3][2]
    assert not (tmp_path / "store").exists()


def test_a_second_source_is_named_by_its_place(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"sources": [{"name": "text", **source_of("transformer_lens", tmp_path)},
                          {"name": "eeg", **source_of("edf", tmp_path)}]}
    hide(monkeypatch, "pyedflib")
    with pytest.raises(ConfigError, match=r"^sources\.1\.inputs\.kind edf needs the pyedflib "
                                          r'package: pip install "thresher\[eeg\]"$'):
        thresher.plan(config)


def test_reading_spkit_s_sample_without_spkit_says_the_same(
        monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "spkit")
    with pytest.raises(ConfigError) as raised:
        spkit_eeg_sample()
    assert str(raised.value) == MISSING[-1][2]
