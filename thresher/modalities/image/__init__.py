"""Images: references listed with the run seed (listing.py), the CPU stage that decodes them
with the model's own preprocessing (decode.py), the open_clip and hf_vision backbones, the
report's thumbnails; declared in modality.py."""
