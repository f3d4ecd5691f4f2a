"""SegFormer (arXiv 2105.15203) in MindSpore: models, conversion, data, training and evaluation.

The library has no Snakemake imports; the workflow's scripts under workflow_scripts/ call it.
"""

__version__ = "0.1.0"
