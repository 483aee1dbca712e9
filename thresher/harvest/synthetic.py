"""TEMPORARY until config stops importing it (removed at the config merge)."""
from thresher.modalities.synthetic.model import HOOK, synthetic_config  # noqa: F401
