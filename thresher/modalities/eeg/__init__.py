"""EEG: recordings, windows and the manifest (recordings.py), what a backbone kind is to the
modality (kind.py), the patchtst kind (patchtst.py) and its model (backbone.py), the report's
traces; YAML words in spec.py, declared in modality.py."""
