"""Building a config: a preset or a YAML file, its relative paths, then `--set` overrides, then validation."""

from __future__ import annotations

import copy
import os
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mgkd.config.base import format_validation_error
from mgkd.config.experiment import ExperimentConfig
from mgkd.errors import MgkdError


def preset_names() -> list[str]:
    return sorted(
        p.name[: -len(".yaml")] for p in resources.files("mgkd.configs").iterdir() if p.name.endswith(".yaml")
    )


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; in a config the first would be silently lost."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (a name used twice?); keep one", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise MgkdError(f"{where} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MgkdError(f"{where} must be a YAML mapping of config keys, got {type(data).__name__}")
    return data


# The preset a run without --config or --preset starts from, when set (the test suite pins its base with it).
PRESET_ENV = "MGKD_PRESET"


def load_raw(config: Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """Read a config file or a preset (when neither is given: the preset named by $MGKD_PRESET, else `demo`)."""
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise MgkdError(
                f"config file {path} does not exist; give a YAML file or use --preset ({', '.join(preset_names())})"
            )
        return _paths_relative_to(_read_yaml(path.read_text(encoding="utf-8"), str(path)), path.parent)
    name = preset or os.environ.get(PRESET_ENV) or "demo"
    if name not in preset_names():
        where = "" if preset or not os.environ.get(PRESET_ENV) else f" (from ${PRESET_ENV}; unset it for the demo)"
        raise MgkdError(f"unknown preset {name!r}{where}; choose one of: {', '.join(preset_names())}")
    text = (resources.files("mgkd.configs") / f"{name}.yaml").read_text(encoding="utf-8")
    # A preset's own data (configs/own_data.yaml's) is named relative to the configs folder.
    return _paths_relative_to(_read_yaml(text, f"preset {name!r}"), Path(str(resources.files("mgkd.configs"))))


def _paths_relative_to(raw: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative file paths of a config resolved against `folder` (the config file's)."""
    # Relative corpus paths in a config file are relative to that file.
    corpus = raw.get("corpus")
    if isinstance(corpus, dict):
        for key in ("path", "source_path", "target_path"):
            if isinstance(corpus.get(key), str) and not Path(corpus[key]).is_absolute():
                corpus[key] = str((folder / corpus[key]).resolve())
    # ...and so are fixed valid/test sets.
    for section, key in (("split", "valid"), ("split", "test")):
        node = raw.get(section)
        if isinstance(node, dict) and key in node:
            node[key] = _eval_set_relative_to(node[key], folder)
    test_sets = raw.get("eval", {}).get("test_sets") if isinstance(raw.get("eval"), dict) else None
    if isinstance(test_sets, dict):
        for name in test_sets:
            test_sets[name] = _eval_set_relative_to(test_sets[name], folder)
    if isinstance(corpus, dict) and isinstance(corpus.get("hf_cache_dir"), str):
        corpus["hf_cache_dir"] = str((folder / Path(corpus["hf_cache_dir"]).expanduser()).resolve())
    # ...and so is a classification data file (not "builtin" or "hf:NAME").
    cls_data = raw.get("classification")
    if isinstance(cls_data, dict) and isinstance(cls_data.get("source"), str):
        source = cls_data["source"]
        if source != "builtin" and not source.startswith("hf:") and not Path(source).expanduser().is_absolute():
            cls_data["source"] = str((folder / Path(source).expanduser()).resolve())
    # ...and so is an external teacher's folder.
    external: Any = raw
    for key in ("generations", "teacher", "external"):
        external = external.get(key) if isinstance(external, dict) else None
    if isinstance(external, dict) and isinstance(external.get("path"), str):
        teacher_dir = Path(external["path"]).expanduser()
        if not teacher_dir.is_absolute():
            external["path"] = str((folder / teacher_dir).resolve())
    return raw


def _eval_set_relative_to(source: Any, folder: Path) -> Any:
    """An eval set's file paths (a string is a TSV path) resolved against the config file's folder."""
    if isinstance(source, str):
        return str((folder / Path(source).expanduser()).resolve())
    if isinstance(source, dict):
        for key in ("path", "source_path", "target_path"):
            if isinstance(source.get(key), str):
                source[key] = str((folder / Path(source[key]).expanduser()).resolve())
    return source


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (numbers, bools, lists)."""
    out = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise MgkdError(f"--set {item!r} must look like key.path=value (e.g. train.max_epochs=3)")
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise MgkdError(f"--set {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = nxt
        node[parts[-1]] = _parse_value(value)
    return out


def _parse_value(text: str) -> Any:
    """YAML scalars and flow collections; YAML 1.1 reads 1e-4 as a string, so numbers get a second try."""
    if not text.strip():
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def validate(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise MgkdError(f"invalid config: {format_validation_error(e)}") from None


def build_config(
    config: Path | None = None, preset: str | None = None, overrides: list[str] | None = None
) -> ExperimentConfig:
    """The CLI's one way to get a config: file or preset, then `--set` overrides, then validation."""
    return validate(apply_overrides(load_raw(config, preset), overrides or []))
