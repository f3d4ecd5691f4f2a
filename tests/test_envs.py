"""envs/*.yaml (conda, not creatable here: no conda on these machines) must pin what pyproject.toml pins."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        requirements += [Requirement(r) for r in extra]
    return {r.name.lower(): r for r in requirements}


def env_requirements(path):
    env = yaml.safe_load(path.read_text())
    assert "python=3.11" in env["dependencies"], f"{path}: python must be 3.11 like pyproject"
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [Requirement(r) for r in pip]


# Environments that deliberately do not hold the project (onnx.yaml needs numpy 2, which MindSpore cannot
# load); tests/test_onnx_export.py checks its pins against envs/onnx-requirements.txt instead.
SEPARATE = {"onnx.yaml"}


def test_every_env_pins_like_pyproject():
    pins = pyproject_requirements()
    envs = sorted((ROOT / "envs").glob("*.yaml"))
    assert envs, "no conda environments under envs/"
    for path in envs:
        for requirement in env_requirements(path):
            name = requirement.name.lower()
            if path.name in SEPARATE and name not in pins:
                continue
            assert name in pins, f"{path.name}: {name} is not a dependency in pyproject.toml"
            assert requirement.specifier == pins[name].specifier, (
                f"{path.name}: {requirement} differs from pyproject's {pins[name]}")


def test_numpy_and_torch_pins_hold_everywhere():
    """numpy<2 (MindSpore's ABI) and torch exactly 2.13.0 (anything looser pulls a CUDA build)."""
    for path in (ROOT / "envs").glob("*.yaml"):
        for requirement in env_requirements(path):
            if requirement.name == "numpy":
                assert not requirement.specifier.contains("2.0.0")
            if requirement.name == "torch":
                assert str(requirement.specifier) == "==2.13.0"


def test_the_orchestrator_shares_the_stages_environment_with_the_numpy1_slurm_plugin():
    """The choice (README, envs/cluster.yaml): one environment holds MindSpore, Snakemake and the SLURM
    plugin, so the plugin is pinned to the last numpy-1 release; the installed one must be it."""
    from importlib.metadata import requires, version

    pins = {r.name: r for r in env_requirements(ROOT / "envs/cluster.yaml")}
    assert str(pins["snakemake-executor-plugin-slurm"].specifier) == "==2.6.1"
    assert str(pins["snakemake-executor-plugin-slurm-jobstep"].specifier) == "==0.6.1"
    assert "mindspore" in pins and not pins["numpy"].specifier.contains("2.0.0")
    assert version("snakemake-executor-plugin-slurm") == "2.6.1"
    assert version("snakemake-executor-plugin-slurm-jobstep") == "0.6.1"
    assert version("numpy").startswith("1.")
    numpy_needs = [r for r in map(Requirement, requires("snakemake-executor-plugin-slurm") or []) if r.name == "numpy"]
    assert all(r.specifier.contains(version("numpy")) for r in numpy_needs)
