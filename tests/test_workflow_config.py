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
