# Config validation and the helpers every stage uses. No rules here.

import os
from pathlib import Path

import yaml
from snakemake.utils import validate


def unknown_config_keys(settings, schema, where="config"):
    """Every key the schema does not know, as 'config.demo.sead'-style paths.

    JSON Schema would reject them too, but one at a time and without the path; a user mistyping
    a key on the command line deserves the full list at once.
    """
    if not isinstance(settings, dict) or schema.get("additionalProperties", True) is not False:
        return []
    known = schema.get("properties", {})
    unknown = [f"{where}.{key}" for key in settings if key not in known]
    for key, value in settings.items():
        if key in known:
            unknown += unknown_config_keys(value, known[key], f"{where}.{key}")
    return unknown


def validate_config(settings):
    schema_path = Path(workflow.basedir) / "schemas" / "config.schema.yaml"
    unknown = unknown_config_keys(settings, yaml.safe_load(schema_path.read_text()))
    if unknown:
        raise ValueError(
            f"unknown config key(s): {', '.join(unknown)} (see {schema_path} for the valid keys)"
        )
    validate(settings, schema="../schemas/config.schema.yaml")


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


def final_outputs():
    outputs = [f"{RESULTS}/data/manifest.json"]
    outputs += [
        f"{RESULTS}/pretrained/mit_{v}.ckpt"
        for v in config["variants"]
        if pretrained_source(v)
    ]
    return outputs
