# SegFormer (MiT-b0..b5) with MindSpore: from raw Cityscapes and the authors' weights to trained
# models, scores, rendered predictions, exported graphs and one results table.
# Thin on purpose: settings in config.yaml (schema in schemas/), one .smk per stage in rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/weights.smk"
include: "rules/train.smk"
include: "rules/evaluate.smk"
include: "rules/infer.smk"
include: "rules/export.smk"
include: "rules/summary.smk"


rule all:
    input:
        final_outputs(),
    default_target: True
