"""InferenceModelRewrite objects from a file, for standalone mode (`--model-rewrites-file`): the
same YAML `kubectl apply` takes. Every problem is reported at once, as for the config."""

from __future__ import annotations

from pathlib import Path

from epp.config.k8s_objects import parsed_objects, read_text
from epp.params.strict import ConfigError
from epp.requestcontrol.model_rewrite import KIND, ModelRewrite, parse_model_rewrite


def load_model_rewrites(text: str, source: str = "model rewrites") -> list[ModelRewrite]:
    rewrites: list[ModelRewrite] = []
    problems: list[str] = []
    names: set[str] = set()
    for path, rewrite in parsed_objects(text, source, KIND, parse_model_rewrite, problems):
        if rewrite.name in names:
            problems.append(f"{path}.metadata.name: InferenceModelRewrite {rewrite.name!r} is defined twice")
        names.add(rewrite.name)
        rewrites.append(rewrite)
    if problems:
        raise ConfigError("; ".join(problems))
    return rewrites


def load_model_rewrites_file(path: Path) -> list[ModelRewrite]:
    return load_model_rewrites(read_text(path, "model rewrites"), str(path))
