"""One folder per modality (text, image, eeg, stored, synthetic), each behind the contract of
contract.py and registered in registry.py; model_tools.py and render.py are what they share."""
