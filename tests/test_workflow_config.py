"""The workflow's configuration: schema defaults, unknown keys, lint, configured sources, optional extras.
Dry runs only (no jobs)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import copy_working_tree

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def snakemake(*args, cwd=ROOT):
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True)


def test_lint_is_clean():
    result = snakemake("--lint")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


def test_unknown_keys_are_named_all_at_once():
    result = snakemake("-n", "--config", "demo={sead: 1}", "colour=blue")
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "config.demo.sead" in message and "config.colour" in message


def test_bad_value_is_rejected():
    result = snakemake("-n", "--config", "variants=[b9]")
    assert result.returncode != 0
    assert "b9" in result.stdout + result.stderr


def test_config_yaml_matches_schema_defaults():
    """config.yaml spells out the demo; the schema's defaults must say the same thing."""
    schema = yaml.safe_load((ROOT / "schemas/config.schema.yaml").read_text())
    config = yaml.safe_load((ROOT / "config.yaml").read_text())

    def check(settings, node, where):
        for key, value in settings.items():
            sub = node["properties"][key]
            if isinstance(value, dict) and "properties" in sub:
                check(value, sub, f"{where}.{key}")
            else:
                assert sub.get("default") == value, f"{where}.{key}: config.yaml {value!r} != schema default {sub.get('default')!r}"

    check(config, schema, "config")


def test_dry_run_of_the_demo_plans_every_stage():
    result = snakemake("-n", "--forceall", "--quiet", "rules")
    assert result.returncode == 0, result.stdout + result.stderr
    for rule in ("demo_dataset", "convert_labels", "train"):
        assert rule in result.stdout


def test_cityscapes_preset_is_the_official_recipe():
    from segformer.settings import load_config

    config = load_config([ROOT / "config.yaml", ROOT / "configs/cityscapes.yaml"])
    train = config["train"]
    assert config["variants"] == ["b0", "b1", "b2", "b3", "b4", "b5"]
    assert config["devices"] * train["batch_size"] * train["grad_accum"] == 8, "official global batch is 8"
    assert (train["iterations"], train["crop_size"], train["base_scale"]) == (160000, [1024, 1024], [2048, 1024])
    assert train["optimizer"] == {"lr": 6e-5, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01,
                                  "head_lr_mult": 10.0, "norm_decay_mult": 0.0}
    assert train["schedule"] == {"power": 1.0, "min_lr": 0.0, "warmup": "linear", "warmup_iters": 1500,
                                 "warmup_ratio": 1e-6}
    assert train["loss"] == {"ignore_index": 255, "avg_non_ignore": False, "loss_weight": 1.0}
    assert train["model"] == {"drop_path_rate": 0.1, "head_dropout": 0.1}
    assert config["precision"] == "fp32"
    assert (train["eval_interval"], train["checkpoint_interval"]) == (4000, 4000)
    assert config["evaluate"] == {"mode": "slide", "scale": [2048, 1024], "crop_size": [1024, 1024],
                                  "stride": [768, 768], "ratios": [1.0], "flip": False}


def test_512x1024_preset_is_the_official_b0_512x1024_recipe():
    """NVlabs segformer.b0.512x1024.city.160k.py: Resize img_scale (1024, 512) ratio 0.5-2.0, crop (512, 1024);
    test: whole image, keep-ratio Resize to (1024, 512), logits back at full size; the rest as 1024x1024."""
    from segformer.settings import load_config

    base = load_config([ROOT / "config.yaml", ROOT / "configs/cityscapes.yaml"])
    config = load_config([ROOT / "config.yaml", ROOT / "configs/cityscapes.yaml",
                          ROOT / "configs/cityscapes_b0_512x1024.yaml"])
    assert config["variants"] == ["b0"]
    assert (config["train"]["crop_size"], config["train"]["base_scale"]) == ([512, 1024], [1024, 512])
    assert config["train"]["ratio_range"] == [0.5, 2.0]
    assert config["evaluate"] == {**base["evaluate"], "mode": "whole", "scale": [1024, 512]}
    different = {key for key in base["train"] if base["train"][key] != config["train"][key]}
    assert different == {"crop_size", "base_scale"}


def test_rehearsal_is_the_official_recipe_at_full_size_for_a_few_iterations():
    """configs/rehearsal.yaml departs from cityscapes.yaml only in the data (generated 2048x1024 frames), one
    device, and the length of training: every variant the same two iterations, the demo's shortening undone."""
    from segformer.settings import load_config, train_settings

    paths = [ROOT / "config.yaml", ROOT / "configs/cityscapes.yaml"]
    official = load_config(paths)
    config = load_config([*paths, ROOT / "configs/rehearsal.yaml"])
    assert (config["demo"]["width"], config["demo"]["height"], config["dataset_root"]) == (2048, 1024, None)
    assert config["variants"] == official["variants"] and config["evaluate"] == official["evaluate"]
    assert config["export"] == official["export"] and config["devices"] == 1
    for variant in config["variants"]:
        settings = train_settings(config, variant)
        assert settings["iterations"] == 2, variant
        different = {key for key in settings if settings[key] != official["train"][key]}
        assert different == {"iterations", "checkpoint_interval", "log_interval"}, variant


def test_training_validates_with_the_test_settings_only_when_it_validates():
    slide = snakemake("-n", "-p", "--forceall", "results/b0/model.ckpt", "--config",
                      "train={eval_interval: 100}", "evaluate={mode: slide, crop_size: [64, 64], stride: [48, 48]}")
    assert slide.returncode == 0, slide.stdout + slide.stderr
    command = next(line for line in slide.stdout.splitlines() if "launch_train.py" in line)
    assert "--validation" in command and '"mode": "slide"' in command
    # off, or an interval longer than the training (the official 4000 in a 300-iteration demo): no validation
    for interval in (0, 4000):
        off = snakemake("-n", "-p", "--forceall", "results/b0/model.ckpt", "--config",
                        f"train={{eval_interval: {interval}}}")
        command = next(line for line in off.stdout.splitlines() if "launch_train.py" in line)
        assert "--validation" not in command, interval


def test_one_variant_override_changes_only_that_variant():
    result = snakemake("-n", "--forceall", "-p", "--config", "variants=[b0,b1]",
                       "overrides={b1: {train: {iterations: 7}}}")
    assert result.returncode == 0, result.stdout + result.stderr
    commands = [line for line in result.stdout.splitlines() if "launch_train.py" in line]
    b0 = next(c for c in commands if "--variant b0" in c)
    b1 = next(c for c in commands if "--variant b1" in c)
    assert '"iterations": 7' in b1 and '"iterations": 7' not in b0


def test_bad_override_is_named():
    result = snakemake("-n", "--config", "overrides={b1: {train: {iterations: -3}}}")
    assert result.returncode != 0
    assert "overrides.b1" in result.stdout + result.stderr


def test_a_two_node_training_is_one_srun_of_one_launcher_per_node():
    result = snakemake("-n", "--forceall", "-p", "results/b0/model.ckpt", "--config", "nodes=2", "devices=8")
    assert result.returncode == 0, result.stdout + result.stderr
    command = next(line for line in result.stdout.splitlines() if "launch_train.py" in line)
    assert "srun --nodes=2 --ntasks-per-node=1" in command and "--devices 8 --nodes 2" in command


def test_slurm_gres_is_the_training_jobs_gres_resource():
    """config `slurm_gres` becomes the train job's `gres` resource (sbatch --gres per node through the
    SLURM executor plugin, with no --ntasks-per-gpu); unset, the job asks for no generic resources."""
    def train_resources(*config):
        result = snakemake("-n", "--forceall", "results/b0/model.ckpt", "--config", *config)
        assert result.returncode == 0, result.stdout + result.stderr
        block = result.stdout.split("rule train:", 1)[1]
        return next(line for line in block.splitlines() if line.strip().startswith("resources:"))

    resources = train_resources("slurm_gres=gpu:8", "nodes=2", "devices=8")
    assert "gres=gpu:8" in resources and "tasks_per_gpu=0" in resources, resources
    assert "nodes=2" in resources and "tasks=2" in resources and "mpi=srun" in resources, resources
    resources = train_resources("devices=1")
    assert "gres=" not in resources and "mpi=" not in resources, resources
    result = snakemake("-n", "results/b0/model.ckpt", "--config", "slurm_gres=gpu:8,nvme:1")
    assert result.returncode != 0 and "slurm_gres" in result.stdout + result.stderr


def test_msrun_command_for_the_second_node_of_two():
    from segformer.engine.launch import master_port, train_command

    command = train_command("train.py", ["--variant", "b0"], devices=8, nodes=2, log_dir="results/b0/msrun",
                            job_key="/abs/results/b0/msrun", node_rank=1, master_addr="node001")
    assert command[0] == "msrun" and command[-3:] == ["train.py", "--variant", "b0"]
    assert {"--worker_num=16", "--local_worker_num=8", "--node_rank=1", "--master_addr=node001",
            f"--master_port={master_port('/abs/results/b0/msrun')}", "--join=True"} <= set(command)
    assert master_port("/abs/results/b0/msrun") != master_port("/abs/results/b1/msrun")
    single = train_command("train.py", [], devices=1, nodes=1, log_dir="x", job_key="x")
    assert "msrun" not in single[0] and single[-1] == "train.py"


def run_without(modules, script_args, cwd=ROOT):
    """A Python entry point run with `modules` made unimportable, as on an install without their extra."""
    code = (f"import runpy, sys\n"
            f"for name in {list(modules)!r}: sys.modules[name] = None\n"
            f"sys.argv = {list(script_args)!r}\n"
            f"if sys.argv[0] == 'snakemake': runpy.run_module('snakemake', run_name='__main__', alter_sys=True)\n"
            f"else: runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_one_line_naming(result, *expected):
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and lines, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr and all(word in lines[-1] for word in expected), result.stderr[-3000:]


def test_a_missing_pretrained_source_is_an_error_naming_it(tmp_path):
    folder = tmp_path / "the authors' backbones"
    folder.mkdir()
    result = snakemake("-n", "all", "--config", f"pretrained_dir={folder}")
    assert_one_line_naming(result, f"{folder}/mit_b0.pth: no such file", "pretrained_dir")
    for name in ("mit_b0.pth", "mit_b1.pth"):  # the configured variants' (unread in a dry run)
        (folder / name).write_bytes(b"")
    result = snakemake("-n", "results/b2/miou.csv", "--config", f"pretrained_dir={folder}")  # any target
    assert_one_line_naming(result, f"{folder}/mit_b2.pth: no such file", "pretrained_dir")
    result = snakemake("-n", "--config", f"pretrained_dir={tmp_path / 'nowhere'}")
    assert_one_line_naming(result, f"{tmp_path / 'nowhere'}: no such folder")
    result = snakemake("-n", "--config", f"weights={{b1: {tmp_path / 'b1.pth'}}}")
    assert_one_line_naming(result, "weights.b1", f"{tmp_path / 'b1.pth'}")


def test_pytorch_weights_without_the_convert_extra_say_what_to_install(tmp_path):
    """Without torch, a .pth in `weights` stops the dry run (the workflow reads its keys) and the
    conversion script, each with one line naming the file and the pip install that fixes it."""
    weights = tmp_path / "my weights' dir" / "b0.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"")  # torch is never reached: its absence is the error
    fix = "pip install -e '.[convert]'"
    result = run_without(["torch"], ["snakemake", "-n", "--config", f"weights={{b0: {weights}}}"])
    assert_one_line_naming(result, "weights.b0", str(weights), fix)
    result = run_without(["torch"], ["workflow_scripts/convert_model.py", "--pt_model_path", str(weights),
                                     "--ms_model_path", str(tmp_path / "b0.ckpt")])
    assert_one_line_naming(result, str(weights), fix)
    assert not (tmp_path / "b0.ckpt").exists()


def test_the_extras_helper_names_each_install_line():
    from segformer.extras import MissingExtra, require

    assert require("json", "convert").dumps([]) == "[]"
    for extra, fix in (("convert", "pip install -e '.[convert]'"), ("cluster", "pip install -e '.[cluster]'"),
                       ("onnx", "pip install -r envs/onnx-requirements.txt")):
        try:
            require("segformer_no_such_module", extra, what="x")
        except MissingExtra as error:
            message = str(error)
        assert message.startswith("x: segformer_no_such_module is not installed") and fix in message
        assert "\n" not in message


def test_a_new_variant_is_one_row_in_the_variant_table(tmp_path):
    """Add b6 to segformer/models/variants.py in a copy of the workflow, change nothing else: the config
    accepts it, the workflow plans its whole chain, and the stage scripts take it."""
    workdir = copy_working_tree(tmp_path / "copy")
    table = workdir / "segformer" / "models" / "variants.py"
    text = table.read_text()
    assert '    "b5": MiTConfig(' in text
    table.write_text(text.replace('\n}\n', '\n    "b6": MiTConfig(embed_dims=_NARROW, depths=(1, 1, 1, 1), decoder_dim=128),\n}\n', 1))
    env = {**os.environ, "PYTHONPATH": str(workdir)}
    plan = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--cores", "1", "results/b6/miou.csv",
                           "results/b6/segformer_b6.mindir", "--config", "variants=[b6]"],
                          cwd=workdir, capture_output=True, text=True, env=env, timeout=300)
    assert plan.returncode == 0, plan.stdout[-3000:] + plan.stderr[-3000:]
    for job in ("train", "evaluate", "export"):
        assert re.search(rf"rule {job}:\n(.*\n)*?\s+wildcards: variant=b6", plan.stdout), job
    # the stage scripts accept it (they fail later, on the missing checkpoint, not on the name)
    run = subprocess.run([sys.executable, "workflow_scripts/export.py", "--variant", "b6", "--ckpt", "missing.ckpt",
                          "--out", "x.mindir", "--height", "64", "--width", "64"],
                         cwd=workdir, capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 1 and "invalid choice" not in run.stderr and "missing.ckpt" in run.stderr, run.stderr[-2000:]
