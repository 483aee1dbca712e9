"""EEG: recordings, windows and the manifest (recordings.py), the PatchTST backbone, the
report's traces; declared in modality.py."""
