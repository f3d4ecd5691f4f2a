"""The workflow's configuration: schema defaults, unknown keys, lint. Dry runs only (no jobs)."""

import subprocess
import sys
from pathlib import Path

import yaml

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
