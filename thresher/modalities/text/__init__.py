"""Text: corpora (corpora.py), tokenised windows and the manifest (windows.py), tokenizers,
the hf_text and transformer_lens backbones, the CE-loss splice, the report's token view, the
preflight checks; declared in modality.py."""
