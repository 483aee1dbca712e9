"""The synthetic source: the dictionary, firing model and ground truth (model.py), the source
that makes its blocks on demand (source.py); declared in modality.py."""
