# Config validation and the helpers every stage uses. No rules here.

import json
import os
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the segformer library, also when not pip-installed

from segformer.settings import (
    coerce_command_line_strings,
    SCHEMA_PATH,
    fill_defaults_and_validate,
    load_schema,
    unknown_keys,
    variant_section,
)


def validate_config(settings):
    """Every unknown key named at once (JSON Schema would stop at the first, without its path), then
    the schema itself (types, ranges, defaults), then each variant's merged training settings."""
    schema = load_schema()
    coerce_command_line_strings(settings, schema)
    unknown = unknown_keys(settings, schema)
    if unknown:
        raise ValueError(
            f"unknown config key(s): {', '.join(unknown)} (see {SCHEMA_PATH} for the valid keys)"
        )
    validate(settings, schema="../schemas/config.schema.yaml")
    for variant in settings["overrides"]:
        merged = variant_section(settings, "train", variant)
        fill_defaults_and_validate({**settings, "train": merged}, f"overrides.{variant}")


validate_config(config)

RESULTS = "results"


def script(name):
    """A stage script's path relative to the working directory, for a rule's params.

    Relative, so that the command (which Snakemake compares to decide reruns) stays the same
    wherever the repository is cloned; it still works with --directory elsewhere.
    """
    return os.path.relpath(Path(workflow.basedir) / "workflow_scripts" / name)


DEMO_ROOT = f"{RESULTS}/demo/cityscapes"


def using_demo():
    return not config["dataset_root"]


def dataset_root():
    """The Cityscapes tree every stage reads: the user's, or the generated demo."""
    return DEMO_ROOT if using_demo() else config["dataset_root"]


def dataset_input():
    """What label conversion depends on: the demo folder (built by a rule) or the user's json files.

    Listing the user's polygons files makes Snakemake rerun conversion when one of them changes.
    """
    if using_demo():
        return DEMO_ROOT
    root = Path(config["dataset_root"])
    files = sorted(root.glob("gtFine/*/*/*_gtFine_polygons.json"))
    if not files:
        raise ValueError(f"dataset_root={root}: no gtFine/*/*/*_gtFine_polygons.json found")
    return [str(f) for f in files]


def pretrained_source(variant):
    """The checkpoint a variant starts from, or None (training from scratch)."""
    if variant in config["weights"]:
        return config["weights"][variant]
    if config["pretrained_dir"]:
        return f"{config['pretrained_dir']}/mit_{variant}.pth"
    return None


def pretrained_input(wildcards):
    source = pretrained_source(wildcards.variant)
    if source is None:
        raise ValueError(
            f"results/pretrained/mit_{wildcards.variant}.ckpt was asked for, but neither "
            f"weights.{wildcards.variant} nor pretrained_dir is set in the config"
        )
    return source


def pretrained_checkpoint(wildcards):
    """The training rule's optional input: the converted checkpoint, when one is configured."""
    if pretrained_source(wildcards.variant) is None:
        return {}
    return {"pretrained": f"{RESULTS}/pretrained/mit_{wildcards.variant}.ckpt"}


def train_settings(variant):
    """The variant's training settings (shared `train` with overrides.<variant>.train merged in)."""
    return variant_section(config, "train", variant)


def per_node_prefix():
    """Several nodes: srun starts one launcher per node of the SLURM job (which reads its node rank
    and the master address from SLURM); one node: the launcher runs directly."""
    if config["nodes"] == 1:
        return ""
    return f"srun --nodes={config['nodes']} --ntasks-per-node=1 --kill-on-bad-exit=1 "


def final_outputs():
    return [f"{RESULTS}/{v}/miou.csv" for v in config["variants"]]


# Light bookkeeping runs where Snakemake runs, not as cluster jobs.
localrules:
    all,
    demo_dataset,
