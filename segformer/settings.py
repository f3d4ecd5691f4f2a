"""The workflow's settings outside Snakemake: load config files, fill the schema's defaults, validate,
and resolve one variant's settings (the `overrides` of a variant merged over the shared ones).

Snakemake validates the same schema (rules/common.smk); the stage scripts use this module when run
by hand with --config_path, so that both paths see the same defaults and the same errors.
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


def load_schema() -> dict:
    """The config schema, with the variant names of the one table (segformer/models/variants.py) as the
    enum of `$defs.variant`: a new variant is a row there, not an edit here."""
    from segformer.models.variants import VARIANTS

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    schema["$defs"]["variant"]["enum"] = list(VARIANTS)
    return schema


def unknown_keys(settings, schema: dict, where: str = "config") -> list[str]:
    """Every key the schema does not know, as 'config.demo.sead'-style paths, all at once."""
    if not isinstance(settings, dict):
        return []
    known = schema.get("properties", {})
    unknown = []
    if schema.get("additionalProperties", True) is False:
        unknown = [f"{where}.{key}" for key in settings if key not in known]
    for key, value in settings.items():
        if key in known:
            unknown += unknown_keys(value, known[key], f"{where}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            unknown += unknown_keys(value, schema["additionalProperties"], f"{where}.{key}")
    return unknown


_TYPE_CHECKS = {
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _coerce(value, schema: dict):
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            sub = properties.get(key, extra if isinstance(extra, dict) else {})
            value[key] = _coerce(item, sub)
        return value
    if isinstance(value, list):
        return [_coerce(item, schema.get("items", {})) for item in value]
    if isinstance(value, str) and value.strip():
        wanted = schema.get("type", [])
        wanted = [wanted] if isinstance(wanted, str) else wanted
        if "string" not in wanted:
            parsed = yaml.safe_load(value)
            if any(_TYPE_CHECKS[t](parsed) for t in wanted if t in _TYPE_CHECKS):
                return parsed
    return value


def coerce_command_line_strings(config: dict, schema: dict) -> dict:
    """Give command-line values their schema types, in place; returns `config`.

    `snakemake --config 'demo={seed: 1}'` parses nested values with YAML's BaseLoader, so every
    nested scalar arrives as a string ('1'); a string where the schema wants a number, a boolean or
    null is read as YAML and kept if it then has that type. overrides.<variant>.train follows the
    schema of `train`.
    """
    _coerce(config, schema)
    for override in (config.get("overrides") or {}).values():
        if isinstance(override, dict) and isinstance(override.get("train"), dict):
            _coerce(override["train"], schema["properties"]["train"])
    return config


def deep_merge(base: dict, override: dict) -> dict:
    """A copy of `base` with `override` merged in, nested mappings merged key by key."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def fill_defaults_and_validate(config: dict, source: str = "config") -> dict:
    """The config with the schema's defaults filled in; a ValueError naming every problem otherwise."""
    import jsonschema

    schema = load_schema()
    config = coerce_command_line_strings(copy.deepcopy(config), schema)
    unknown = unknown_keys(config, schema)
    if unknown:
        raise ValueError(f"{source}: unknown config key(s): {', '.join(unknown)} (valid keys: {SCHEMA_PATH})")
    validator_class = jsonschema.validators.validator_for(schema)
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        for name, prop in properties.items():
            if "default" in prop and isinstance(instance, dict):
                instance.setdefault(name, copy.deepcopy(prop["default"]))
        yield from validate_properties(validator, properties, instance, subschema)

    filling = jsonschema.validators.extend(validator_class, {"properties": set_defaults})
    errors = sorted(filling(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        raise ValueError(f"{source}: " + "; ".join(
            f"{'.'.join(map(str, e.absolute_path)) or 'config'}: {e.message}" for e in errors))
    return config


def load_config(paths: list[str | Path], overrides: dict | None = None) -> dict:
    """Merge YAML files in order (later wins), then `overrides`, then fill defaults and validate."""
    config: dict = {}
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: config file not found")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: a config file must hold a mapping, found {type(loaded).__name__}")
        config = deep_merge(config, loaded)
    config = deep_merge(config, overrides or {})
    return fill_defaults_and_validate(config, " + ".join(map(str, paths)) or "config")


def train_settings(config: dict, variant: str) -> dict:
    """A variant's training settings: the shared `train` section; on the demo dataset (no dataset_root)
    the demo's iteration count for that variant (demo.iterations); then overrides.<variant>.train."""
    shared = config["train"]
    demo_iterations = (config.get("demo") or {}).get("iterations") or {}
    if config.get("dataset_root") is None and variant in demo_iterations:
        shared = {**shared, "iterations": demo_iterations[variant]}
    return deep_merge(shared, config.get("overrides", {}).get(variant, {}).get("train", {}))
