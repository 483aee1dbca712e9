"""Nothing thresher reads runs code: run files are safetensors, JSON, Parquet and raw arrays.

Two kinds of check. Behaviour: a run directory whose files were swapped for pickles (which
would run code when unpickled) is refused by every reader, and the code never runs. Source:
every call in the package that could deserialise code or start a shell is one of a short,
reviewed list (tests fail on a new one until it is reviewed here).
"""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import SafetensorError

from tests.package_source import PACKAGE, source_files
from thresher.config import SAEConfig, TrainConfig
from thresher.rundir import RunDirError, config_of_run
from thresher.stream.log import Cursor
from thresher.stream.stats import estimate_stream_stats
from thresher.train.checkpoint import checkpoint_dir, read_export
from thresher.train.trainer import Trainer


class Payload:
    """Unpickling this creates `marker`: proof that a reader ran code from the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def pickles(marker: Path) -> dict[str, bytes]:
    buffer = io.BytesIO()
    torch.save({"W_enc": Payload(marker)}, buffer)  # a torch zip file: pickle inside
    return {"pickle": pickle.dumps(Payload(marker)), "torch.save": buffer.getvalue()}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_pickles_in_a_run_directory_are_refused_and_never_run(kind: str, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    payload = pickles(marker)[kind]
    sae = SAEConfig(sae_id="00-topk", arch="topk", d_sae=16, arch_keys={"k": 2}, lr=1e-3, seed=0)
    train = TrainConfig(batch_size=8, rows=64, d_sae=16, k=2)
    stats = estimate_stream_stats(np.random.default_rng(0).normal(size=(64, 8)))
    trainer = Trainer("t0", [sae], train, stats, tmp_path)
    trainer.save_checkpoint(Cursor(0, 0))
    trainer.export()
    folder = checkpoint_dir(tmp_path, sae.sae_id)
    for weights in folder.glob("state-*.safetensors"):
        weights.write_bytes(payload)  # resume state
    (tmp_path / "saes" / sae.sae_id / "sae_weights.safetensors").write_bytes(payload)  # export
    (tmp_path / "run.json").write_bytes(payload)

    # Refused by safetensors' header parser, before anything of the payload is interpreted.
    with pytest.raises(SafetensorError, match="Error while deserializing header"):
        Trainer("t0", [sae], train, stats, tmp_path)
    with pytest.raises(SafetensorError, match="Error while deserializing header"):
        read_export(tmp_path / "saes" / sae.sae_id)
    with pytest.raises(RunDirError, match=r"run\.json is not the JSON thresher writes"):
        config_of_run(tmp_path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Source audit
# --------------------------------------------------------------------------------------------

# (file, call) pairs reviewed as safe, with the reason.
REVIEWED = {
    # spkit's own sample recording, read from the installed spkit package (never a run file):
    # spkit ships it only as a pickle of plain arrays.
    ("modalities/eeg/recordings.py", "pickle.load"),
    # `git rev-parse HEAD` in thresher's own folder: a fixed argument list, no shell.
    ("rundir.py", "subprocess.run"),
}
NEVER = {"eval", "exec", "os.system", "os.popen", "pickle.loads", "marshal.loads",
         "shelve.open", "dill.load", "joblib.load", "yaml.unsafe_load", "yaml.full_load"}


def call_name(node: ast.Call) -> str:
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    parts.append(func.id if isinstance(func, ast.Name) else "<expr>")  # model.eval() is not eval
    return ".".join(reversed(parts))


def keyword(node: ast.Call, name: str) -> Any:
    for kw in node.keywords:
        if kw.arg == name:
            return ast.literal_eval(kw.value) if isinstance(kw.value, ast.Constant) else kw.value
    return None


def test_no_call_in_the_package_can_deserialise_code_or_start_a_shell() -> None:
    problems, seen = [], set()
    for path in source_files():
        rel = str(path.relative_to(PACKAGE))
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, ast.Call):
                continue
            name, where = call_name(node), f"{rel}:{node.lineno}"
            if name in NEVER:
                problems.append(f"{where}: {name}")
            elif name == "torch.load" and keyword(node, "weights_only") is not True:
                problems.append(f"{where}: torch.load without weights_only=True")
            elif name in ("np.load", "numpy.load") and keyword(node, "allow_pickle") is not False:
                problems.append(f"{where}: np.load without allow_pickle=False")
            elif name == "yaml.load" and not isinstance(keyword(node, "Loader"), ast.Name):
                problems.append(f"{where}: yaml.load without our SafeLoader")
            elif name.startswith(("pickle.", "subprocess.")):
                if (rel, name) not in REVIEWED:
                    problems.append(f"{where}: {name} (review it, then add it to REVIEWED)")
                seen.add((rel, name))
                if name.startswith("subprocess.") and (
                        keyword(node, "shell") is not None
                        or not isinstance(node.args[0], ast.List)):
                    problems.append(f"{where}: {name} must take a literal argument list")
    assert not problems, "\n".join(problems)
    assert seen == REVIEWED  # a reviewed call that is gone should leave the list too
