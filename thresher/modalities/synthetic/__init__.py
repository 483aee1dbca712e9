"""The synthetic source: its settings (spec.py), the dictionary, firing model and ground truth
(model.py), the kind that makes its blocks on demand (source.py); declared in modality.py."""
