"""Images: references listed with the run seed (listing.py), the CPU stage that decodes them
with the model's own preprocessing (decode.py), one module per backbone kind (what it is to
the modality: kind.py), the report's thumbnails; YAML words in spec.py, declared in
modality.py."""
