"""TransformerLens hook names, known without building a model: `thresher plan` checks a
source's hooks against them (no import of transformer_lens, no weights), and the backbone turns
on the model options a hook needs to fire.

tests/config/test_preflight.py checks these tables against the `hook_dict` of HookedTransformers of
several architectures, so a TransformerLens that adds or renames a hook fails a test here.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from thresher.config import ConfigError

# Every hook of a block, in any architecture TransformerLens builds (some only in some: rotary
# models have hook_rot_q, gated MLPs mlp.hook_pre_linear, attn_only models no MLP hooks).
BLOCK_HOOKS = frozenset({
    "hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_in", "hook_attn_out",
    "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in", "hook_mlp_out",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_result",
    "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_rot_q", "attn.hook_rot_k",
    "ln1.hook_scale", "ln1.hook_normalized", "ln2.hook_scale", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_post", "mlp.hook_pre_linear",
})
# Hooks outside the blocks: before block 0 (EMBED_HOOKS) or after the last one.
EMBED_HOOKS = ("hook_embed", "hook_pos_embed", "hook_tokens")
MODEL_HOOKS = frozenset({*EMBED_HOOKS, "ln_final.hook_scale", "ln_final.hook_normalized",
                         "unembed.hook_in", "unembed.hook_out"})
# Block hooks that fire only with a model option on; the backbone turns it on (`enable`).
OPTION_OF = {"attn.hook_result": "use_attn_result", "hook_attn_in": "use_attn_in",
             "hook_q_input": "use_split_qkv_input", "hook_k_input": "use_split_qkv_input",
             "hook_v_input": "use_split_qkv_input", "hook_mlp_in": "use_hook_mlp_in"}
# Block hooks of the MLP: an attn_only model has none of them.
MLP_HOOKS = frozenset({"hook_resid_mid", "hook_mlp_in", "hook_mlp_out", "ln2.hook_scale",
                       "ln2.hook_normalized", "mlp.hook_pre", "mlp.hook_post",
                       "mlp.hook_pre_linear"})
# Attention between token pairs [batch, head, query, key]: no row per token.
NOT_PER_TOKEN = ("hook_pattern", "hook_attn_scores")

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def block_of(hook: str) -> int | None:
    """The block a hook belongs to (None: a hook outside the blocks)."""
    match = _BLOCK.fullmatch(hook)
    return int(match.group(1)) if match else None


def options_for(hooks: tuple[str, ...]) -> list[str]:
    """The model options the hooks need to fire, e.g. ["use_attn_result"]."""
    suffixes = {m.group(2) for h in hooks if (m := _BLOCK.fullmatch(h))}
    return sorted({OPTION_OF[s] for s in suffixes if s in OPTION_OF})


def check_hook(hook: str, config: dict[str, Any] | None) -> None:
    """One ConfigError line, with the fix, for a hook no TransformerLens model of `config`
    (None: a model by name, whose config is unknown here) has or that gives no row per token."""
    match = _BLOCK.fullmatch(hook)
    suffix = match.group(2) if match else hook
    if suffix not in (BLOCK_HOOKS if match else MODEL_HOOKS):
        known = [f"blocks.{match.group(1) if match else 0}.{s}" for s in sorted(BLOCK_HOOKS)]
        close = difflib.get_close_matches(hook, known + sorted(MODEL_HOOKS), n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(
            f"source.hook {hook!r} is not a TransformerLens hook; {hint}hooks look like "
            "blocks.1.hook_resid_post, blocks.0.mlp.hook_post, blocks.0.attn.hook_z, hook_embed")
    if suffix.endswith(NOT_PER_TOKEN):
        raise ConfigError(
            f"source.hook {hook!r} holds attention between token pairs [batch, head, query, "
            "key], not one vector per token; choose e.g. the block's attn.hook_z or "
            "hook_attn_out")
    if config is None or not match:
        return
    n_layers = int(config.get("n_layers", -1))
    if 0 <= n_layers <= int(match.group(1)):
        raise ConfigError(
            f"source.hook {hook!r} names block {match.group(1)} but the model has "
            f"{n_layers} blocks (n_layers); use blocks.0 ... blocks.{n_layers - 1}")
    if config.get("attn_only") and suffix in MLP_HOOKS:
        raise ConfigError(
            f"source.hook {hook!r} is an MLP hook but the model is attn_only (no MLPs); "
            f"choose e.g. blocks.{match.group(1)}.hook_attn_out or hook_resid_post")


def enable(model: Any, hooks: tuple[str, ...]) -> None:
    """Turn on the options the hooks need to fire (`use_attn_result` for attn.hook_result, ...):
    asking for the hook is asking for its option."""
    for option in options_for(hooks):
        getattr(model, f"set_{option}")(True)
