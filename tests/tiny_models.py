"""One tiny random-weight model per backbone family, shared by every test that builds one.

Each is a `source.backbone.config`: the library's own config class builds it (no download), in
milliseconds. A test that needs a variant (dropout, another vocabulary) overrides keys of these.
"""

from __future__ import annotations

from typing import Any

# hf_text, an encoder: 3 layers (hooks embeddings, layer.0..layer.2); MiniLM's tokenizer.
TINY_BERT: dict[str, Any] = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 3,
                             "num_attention_heads": 2, "intermediate_size": 64}
# hf_text, a causal LM (CE/KL splicing needs an LM head); MiniLM's tokenizer (its vocabulary).
TINY_GPT2: dict[str, Any] = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 4,
                             "vocab_size": 30522, "n_positions": 32, "bos_token_id": 0,
                             "eos_token_id": 0}
# transformer_lens: byte-level tokenizer (no tokenizer_name): ids 1..256, BOS 0; n_ctx holds
# the longest context a test asks for.
TINY_TL: dict[str, Any] = {"n_layers": 2, "d_model": 32, "n_ctx": 256, "d_head": 8,
                           "n_heads": 4, "d_mlp": 64, "d_vocab": 300, "act_fn": "gelu",
                           "normalization_type": "LN"}
# open_clip, the ViT-B-32 family (model-config overrides): 2 blocks, 32 px, 8 px patches.
TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1},
}
# hf_vision: a ViT and a SigLIP vision tower of the same shape (32 px, 16 patches).
TINY_VIT: dict[str, Any] = {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2,
                            "num_attention_heads": 2, "intermediate_size": 64, "image_size": 32,
                            "patch_size": 8}
TINY_SIGLIP: dict[str, Any] = {**TINY_VIT, "model_type": "siglip_vision_model"}
# patchtst: 14 channels (spkit's sample recording), windows of 128 samples, 8 patches each.
TINY_PATCHTST: dict[str, Any] = {
    "num_input_channels": 14, "context_length": 128, "patch_length": 16, "patch_stride": 16,
    "d_model": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "ffn_dim": 64}
