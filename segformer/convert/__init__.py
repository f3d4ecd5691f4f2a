"""Conversions: Cityscapes polygon annotations -> train-id label images (labels.py), checkpoints -> MindSpore (weights.py).

Submodules are imported explicitly (`from segformer.convert.labels import convert_dataset`) so that label
conversion never pulls in the heavier checkpoint-reading dependencies.
"""
