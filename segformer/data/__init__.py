"""Cityscapes file discovery, augmentations, the MindSpore dataset pipeline and the demo generator."""
