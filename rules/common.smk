# Config validation and the helpers every stage uses. No rules here.

import functools
import json
import os
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)  # the segformer library, also when not pip-installed

from segformer.engine.inference_settings import InferenceSettings
from segformer.extras import MissingExtra
from segformer.settings import (
    coerce_command_line_strings,
    SCHEMA_PATH,
    fill_defaults_and_validate,
    load_schema,
    unknown_keys,
)
from segformer.settings import train_settings as segformer_train_settings
from segformer.models.variants import VARIANTS as SEGFORMER_VARIANTS


def config_error(message):
    """Stop with one line on stderr and exit status 1: what is wrong, and what to do about it."""
    sys.exit(f"error: {message}")


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
    fill_defaults_and_validate(settings)  # variant names against the table (the schema file has no list)
    for variant in settings["overrides"]:
        merged = segformer_train_settings(settings, variant)
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


VARIANTS = tuple(SEGFORMER_VARIANTS)  # b0..b5: the rows of segformer/models/variants.py


@functools.lru_cache(maxsize=None)
def imports_trained_model(variant):
    """True when weights.<variant> is a trained segmentation checkpoint (it has a decode head): the
    variant is then converted and evaluated, not trained. Decided from the file's key names."""
    source = config["weights"].get(variant)
    if source is None:
        return False
    from segformer.convert.weights import holds_decode_head  # imports MindSpore: only when needed

    try:
        return holds_decode_head(source)
    except (ValueError, MissingExtra) as error:  # a missing or unreadable file; torch not installed
        config_error(f"config weights.{variant}: {error}")


def variant_pattern(variants):
    """A wildcard constraint matching exactly these variants (none: a pattern that never matches)."""
    return "|".join(variants) if variants else "(?!)"


wildcard_constraints:
    variant=variant_pattern(VARIANTS),


def trained_here():
    return variant_pattern([v for v in VARIANTS if not imports_trained_model(v)])


def imported():
    return variant_pattern([v for v in VARIANTS if imports_trained_model(v)])


def pretrained_source(variant):
    """The checkpoint a variant starts from, or None (training from scratch)."""
    if variant in config["weights"]:
        return None if imports_trained_model(variant) else config["weights"][variant]
    if config["pretrained_dir"]:
        return f"{config['pretrained_dir']}/mit_{variant}.pth"
    return None


def existing_pretrained_source(variant):
    """pretrained_source(variant), which must exist: a missing one stops the run, named.

    Called where the configuration is read (configured variants) and by the training and conversion jobs'
    input functions (any variant a target needs). An exception raised in an input function would not do:
    Snakemake drops a job whose input cannot be had, and when that job's output is already on disk it
    keeps the file silently, so a model trained from scratch would pass for one trained from the
    configured source. SystemExit is not caught there.
    """
    source = pretrained_source(variant)
    if source is not None and not Path(source).exists():
        where = f"weights.{variant}" if variant in config["weights"] else "pretrained_dir"
        config_error(f"config {where}: {source}: no such file (variant {variant} starts from it; "
                     f"add the file, or unset {where} to train from scratch)")
    return source


def pretrained_input(wildcards):
    source = existing_pretrained_source(wildcards.variant)
    if source is None:
        raise ValueError(
            f"results/pretrained/mit_{wildcards.variant}.ckpt was asked for, but neither "
            f"weights.{wildcards.variant} nor pretrained_dir is set in the config"
        )
    return source


def pretrained_checkpoint(wildcards):
    """The training rule's optional input: the converted checkpoint, when one is configured."""
    if existing_pretrained_source(wildcards.variant) is None:
        return {}
    return {"pretrained": f"{RESULTS}/pretrained/mit_{wildcards.variant}.ckpt"}


def pretrained_flag(wildcards, input):
    """train.py's `--pretrained PATH` (shell-quoted), or nothing when training from scratch."""
    return f"--pretrained {shlex.quote(input.pretrained)}" if "pretrained" in input.keys() else ""


def check_pretrained_sources():
    """The configured variants' starting points exist (before any DAG work); `weights` files are
    checked when read (imports_trained_model)."""
    folder = config["pretrained_dir"]
    if folder and not Path(folder).is_dir():
        config_error(f"config pretrained_dir: {folder}: no such folder (it should hold the authors' "
                     f"mit_bX.pth; unset pretrained_dir to train from scratch)")
    for variant in config["variants"]:
        existing_pretrained_source(variant)


check_pretrained_sources()


def train_settings(variant):
    """The variant's training settings (shared `train`, the demo's per-variant iterations on the demo,
    overrides.<variant>.train), as segformer.settings computes them for scripts run by hand."""
    return segformer_train_settings(config, variant)


def train_threads():
    """CPU threads of a training job on each node: two per device (the worker and its data loading)."""
    return max(1, config["devices"]) * 2


def per_node_prefix():
    """Several nodes: srun starts one launcher per node of the SLURM job (which reads its node rank
    and the master address from SLURM), with the node's CPUs (a cgroup-confined step would otherwise
    get one); one node: the launcher runs directly."""
    if config["nodes"] == 1:
        return ""
    return (f"srun --nodes={config['nodes']} --ntasks-per-node=1 --cpus-per-task={train_threads()}"
            " --kill-on-bad-exit=1 ")


def inference_settings():
    """The `evaluate` section as the JSON every inference stage gets (a change reruns those stages)."""
    return json.dumps(config["evaluate"], sort_keys=True)


def validation_flag(variant):
    """train.py's --validation: the `evaluate` section, with which the periodic validation during training
    runs (as the official configs validate with their test settings). Only when that validation runs at
    least once, so that a change of `evaluate` retrains nothing otherwise (a short run of a recipe that
    validates every 4000 iterations, such as the full-size rehearsal, never validates)."""
    settings = train_settings(variant)
    if not settings["eval_interval"] or settings["eval_interval"] > settings["iterations"]:
        return ""
    return f"--validation {shlex.quote(inference_settings())}"


def evaluation_description():
    return InferenceSettings.from_config(config["evaluate"]).describe()


def summary_flags():
    """summarize.py flags: which paper column to compare with, demo data or not, and a note for each
    variant imported rather than trained, or trained for another number of iterations."""
    flags = []
    if InferenceSettings.from_config(config["evaluate"]).averages_probabilities:
        flags.append("--multi_scale")
    if using_demo():
        flags.append("--demo")
    for v in config["variants"]:
        if imports_trained_model(v):
            note = f"{v}=converted from {config['weights'][v]} and evaluated as given (not trained here)"
        elif train_settings(v)["iterations"] != config["train"]["iterations"]:
            note = f"{v}=trained for {train_settings(v)['iterations']} iterations (train.iterations: {config['train']['iterations']})"
        else:
            continue
        flags.append(f"--note {shlex.quote(note)}")
    return " ".join(flags)


def infer_images():
    """What the rendering stage draws: the configured folder, or the val split list."""
    return config["infer"]["images"] or f"{RESULTS}/data/val.txt"


def export_files(variant):
    """The export stage's outputs: MINDIR, and AIR when asked for (`export.air`; MindSpore writes AIR only on
    Ascend, and deprecates it in 2.10)."""
    files = {"mindir": f"{RESULTS}/{variant}/segformer_{variant}.mindir"}
    if config["export"]["air"]:
        if config["device"] != "Ascend":
            raise ValueError(f"export.air: true needs device: Ascend (MindSpore writes AIR files only on Ascend); "
                             f"device is {config['device']}")
        files["air"] = f"{RESULTS}/{variant}/segformer_{variant}.air"
    return files


def slurm_gres():
    """The training job's `gres` resource for Snakemake's SLURM executor (sbatch --gres, per node):
    config `slurm_gres` as the cluster names its devices ("gpu:8", "gpu:a100:8", "npu:8"), or None
    when it is empty (the default: the job asks SLURM for no generic resources)."""
    return config["slurm_gres"] or None


def npus(count=1):
    """A job's `npu` resource: the accelerators it holds (0 on CPU), so that `--resources npu=8` runs at
    most 8 devices' worth of jobs at once; each job then takes a free device (segformer.devices)."""
    return 0 if config["device"] == "CPU" else count


def final_outputs():
    """The default target: per variant its scores, rendered predictions and exported graph(s); then the table."""
    per_variant = []
    for v in config["variants"]:
        per_variant += [f"{RESULTS}/{v}/miou.csv", f"{RESULTS}/{v}/infer", *export_files(v).values()]
        if config["export"]["onnx"]:
            per_variant.append(f"{RESULTS}/{v}/segformer_{v}.onnx")
    return per_variant + [f"{RESULTS}/summary.csv", f"{RESULTS}/summary.md", f"{RESULTS}/miou.png"]


# Light bookkeeping runs where Snakemake runs, not as cluster jobs.
localrules:
    all,
    demo_dataset,
    summary,
