"""Every modality, registered here and nowhere else; the harvest, `thresher plan` and the
report find a source's modality by its backbone kind.

A new modality is a folder beside these with a `modality.py` declaring its `Modality`, one
entry below, and its YAML kinds (backbones, inputs) in the config's declaration,
`MODALITY_KINDS` in thresher/config/schema.py, which checks a config without importing a stage.
"""

from __future__ import annotations

from thresher.config import SourceConfig
from thresher.modalities.contract import Modality
from thresher.modalities.eeg.modality import EEG
from thresher.modalities.image.modality import IMAGE
from thresher.modalities.stored.modality import STORED
from thresher.modalities.synthetic.modality import SYNTHETIC
from thresher.modalities.text.modality import TEXT

MODALITIES: tuple[Modality, ...] = (TEXT, IMAGE, EEG, STORED, SYNTHETIC)
_BY_KIND = {kind: modality for modality in MODALITIES for kind in modality.backbone_kinds}


def modality_of(source: SourceConfig) -> Modality:
    """The modality that serves the source's backbone kind."""
    return _BY_KIND[source.backbone.kind]
