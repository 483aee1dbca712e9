"""Text: corpora (corpora.py), tokenised windows and the manifest (windows.py), tokenizers,
one module per backbone kind (hf_text.py, transformer_lens.py; what a kind is to the modality:
kind.py), their models (backbones.py), the CE-loss splice, the report's token view, the
preflight checks; YAML words in spec.py, declared in modality.py."""
