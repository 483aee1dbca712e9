"""EEG: recordings, windows and the manifest (recordings.py), the patchtst kind (backbone.py),
the report's traces; YAML words in spec.py, declared in modality.py."""
