"""The optional C extensions' one shared rule: a part whose extension was not built (no C compiler
at install) runs its pure-Python version, with the same results, and says so once a process, so
an operator who sees more CPU than the docs promise knows why."""

from __future__ import annotations

import logging
import re
from functools import cache
from typing import Any

import yaml

log = logging.getLogger(__name__)


@cache
def warn_python_fallback(part: str, cost: str) -> None:
    """Say once a process that `part` runs in Python, at `cost` (what the C version saves)."""
    log.warning(
        "%s: its C extension was not built (no C compiler at install, or `make install` not run "
        "since a pull): using the pure-Python version, same results at %s",
        part,
        cost,
    )


class _UniqueKeys(yaml.constructor.SafeConstructor):
    """A mapping that names a key twice is an error, as in Kubernetes' strict YAML decoding (GIE's
    config loader decodes with `serializer.EnableStrict`; kubectl refuses such manifests): PyYAML
    keeps the last value, so `plugins:` written twice silently dropped the first list. A key that a
    `<<` merge brings in may still be overridden, as YAML's merge means."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the constructor below refuses it
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {key!r} (first on line {first.start_mark.line + 1})",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


class _UniqueKeysCLoader(_UniqueKeys, yaml.CSafeLoader):
    pass


class _UniqueKeysLoader(_UniqueKeys, yaml.SafeLoader):
    pass


def _go_float(loader: Any, node: yaml.ScalarNode) -> float | int:
    """A YAML float as Go's loaders hand it on: they convert YAML to JSON, where a whole float64
    below 1e21 is written without a fraction (`10.0`, `1e3` -> `10`, `1000`), so an integer field
    takes it; a float field takes the integer alike."""
    value = loader.construct_yaml_float(node)
    return int(value) if value.is_integer() and abs(value) < 1e21 else value


# A number with an exponent but no dot or no exponent sign (`1e3`, `8e-1`, `1.5e3`) is a float to
# Go's YAML reader (sigs.k8s.io/yaml, which GIE's and llm-d's config loaders and kubectl use) and
# to YAML 1.2, but a string to PyYAML's YAML 1.1 rules, so `weight: 1e3` was refused as "not a
# valid number". Added after PyYAML's own resolvers: an integer still reads as one.
_GO_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$")
for _loader in (_UniqueKeysCLoader, _UniqueKeysLoader):
    _loader.add_implicit_resolver("tag:yaml.org,2002:float", _GO_EXPONENT_FLOAT, list("-+0123456789."))
    _loader.add_constructor("tag:yaml.org,2002:float", _go_float)


def safe_yaml(text: str) -> Any:
    """`yaml.safe_load` through libyaml when PyYAML has it: a 3,000-entry endpoints file parses in
    a third of the CPU, so its reload thread holds the GIL (and the event loop) a third as long."""
    documents = safe_yaml_documents(text, every=False, unique_keys=False)
    return documents[0] if documents else None


def safe_yaml_documents(text: str, every: bool = True, unique_keys: bool = True) -> list[Any]:
    """The documents of a YAML stream (empty ones left out when `every`; only the first read
    otherwise, as `yaml.safe_load` does), through libyaml when PyYAML has it; with `unique_keys`,
    a key written twice in a mapping is an error. Nesting that would exhaust the stack is a
    `yaml.YAMLError` like any other malformed file, never a RecursionError and its traceback:
    libyaml refuses more than 1,000 levels itself, and PyYAML's Python parser recurses once per
    level (10,000 nested `[` was a crash of `epp config check` and `epp serve`)."""
    loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader]
    if yaml.__with_libyaml__:
        loader = _UniqueKeysCLoader if unique_keys else yaml.CSafeLoader
    else:
        warn_python_fallback("YAML parsing (libyaml)", "about three times the CPU per file")
        loader = _UniqueKeysLoader if unique_keys else yaml.SafeLoader
    try:
        if not every:
            return [yaml.load(text, Loader=loader)]
        return [d for d in yaml.load_all(text, Loader=loader) if d is not None]
    except RecursionError:
        raise yaml.YAMLError("objects and lists are nested too deeply") from None
