"""thresher: harvest activations with Ray and thresh them into sparse features."""

from thresher.api import plan, resume, run

__version__ = "0.1.0"
__all__ = ["__version__", "plan", "resume", "run"]
