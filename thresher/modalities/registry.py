"""Every modality, registered here and nowhere else; the harvest, `thresher plan` and the
report find a source's modality by its backbone kind, which its modality's spec.py declares.

A new modality is a folder beside these with a `spec.py` (its YAML words, which config reads
without importing a stage), a `modality.py` declaring its `Modality`, and one entry below.
"""

from __future__ import annotations

from thresher.config import SourceConfig
from thresher.config.kinds import modality_spec_of
from thresher.modalities.contract import Modality
from thresher.modalities.eeg.modality import EEG
from thresher.modalities.image.modality import IMAGE
from thresher.modalities.stored.modality import STORED
from thresher.modalities.synthetic.modality import SYNTHETIC
from thresher.modalities.text.modality import TEXT

MODALITIES: tuple[Modality, ...] = (TEXT, IMAGE, EEG, STORED, SYNTHETIC)
_BY_NAME = {modality.name: modality for modality in MODALITIES}


def modality_of(source: SourceConfig) -> Modality:
    """The modality that serves the source's backbone kind."""
    return _BY_NAME[modality_spec_of(source.backbone.kind).name]
