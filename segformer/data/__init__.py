"""Cityscapes file discovery, augmentations and the MindSpore dataset pipeline."""
