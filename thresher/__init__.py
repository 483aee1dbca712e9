"""thresher: harvest activations with Ray and thresh them into sparse features."""

from thresher.api import plan, resume, run
from thresher.version import __version__

__all__ = ["__version__", "plan", "resume", "run"]
