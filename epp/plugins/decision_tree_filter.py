"""`decision-tree-filter` (GIE v0.4-v0.5): compose filters as a tree, GIE's original default
scheduler shape ("low queue? then LoRA affinity, then least queue, then least KV cache; else ...").

Parameters: `current` and optionally `nextOnSuccess`, `nextOnFailure`, `nextOnSuccessOrFailure`,
each either `{pluginRef: <a filter plugin>}` or `{decisionTree: {...the same shape...}}`. As GIE's:
run `current`; if it kept some endpoints, continue with `nextOnSuccess` (else
`nextOnSuccessOrFailure`) on what it kept, or return them when neither is set; if it kept none,
continue with `nextOnFailure` (else `nextOnSuccessOrFailure`) on the original candidates, or return
none. The filters a tree names are configured plugins, usually not listed in any profile."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import model_validator

from epp.datastore import Endpoint
from epp.framework import Plugin, PluginContext, PluginParams, PluginReference, PluginUser, register
from epp.params.strict import StrictModel
from epp.requests import InferenceRequest
from epp.scheduling.framework import Filter


class TreeEntry(StrictModel):
    plugin_ref: str | None = None
    decision_tree: DecisionTree | None = None

    @model_validator(mode="after")
    def _one(self) -> TreeEntry:
        if (self.plugin_ref is None) == (self.decision_tree is None):
            raise ValueError("give exactly one of pluginRef and decisionTree")
        return self


class DecisionTree(StrictModel):
    current: TreeEntry
    next_on_success: TreeEntry | None = None
    next_on_failure: TreeEntry | None = None
    next_on_success_or_failure: TreeEntry | None = None

    def references(self, path: str) -> Iterator[tuple[str, str]]:
        """(parameter path, plugin name) of every pluginRef in the tree."""
        for key in ("current", "nextOnSuccess", "nextOnFailure", "nextOnSuccessOrFailure"):
            entry: TreeEntry | None = getattr(self, _snake(key))
            if entry is None:
                continue
            if entry.plugin_ref is not None:
                yield f"{path}{key}.pluginRef", entry.plugin_ref
            elif entry.decision_tree is not None:
                yield from entry.decision_tree.references(f"{path}{key}.decisionTree.")


TreeEntry.model_rebuild()


class DecisionTreeParams(DecisionTree, PluginParams):
    pass


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


class _Node:
    def __init__(self, tree: DecisionTree, plugins: Mapping[str, Plugin]) -> None:
        self.current = _resolve(tree.current, plugins)
        self.on_success = _resolve(tree.next_on_success, plugins)
        self.on_failure = _resolve(tree.next_on_failure, plugins)
        self.on_either = _resolve(tree.next_on_success_or_failure, plugins)

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        kept = self.current.filter(request, candidates)
        if kept:
            following = self.on_success or self.on_either
            return following.filter(request, kept) if following is not None else kept
        following = self.on_failure or self.on_either
        return following.filter(request, candidates) if following is not None else kept


def _resolve(entry: TreeEntry | None, plugins: Mapping[str, Plugin]) -> Any:
    if entry is None:
        return None
    if entry.plugin_ref is not None:
        return plugins[entry.plugin_ref]
    assert entry.decision_tree is not None
    return _Node(entry.decision_tree, plugins)


@register
class DecisionTreeFilter(Plugin, Filter, PluginUser):
    type_name = "decision-tree-filter"
    Params = DecisionTreeParams

    def __init__(self, name: str, params: DecisionTreeParams, context: PluginContext) -> None:
        super().__init__(name, params, context)
        self.params = params
        self._root: _Node | None = None

    @classmethod
    def referenced_plugins(cls, params: Any) -> list[PluginReference]:
        assert isinstance(params, DecisionTreeParams)
        return [PluginReference(path, name, Filter, "a filter") for path, name in params.references("")]

    def use_plugins(self, plugins: Mapping[str, Plugin]) -> None:
        self._root = _Node(self.params, plugins)

    def filter(self, request: InferenceRequest, candidates: list[Endpoint]) -> list[Endpoint]:
        assert self._root is not None, "use_plugins runs before the first request"
        return self._root.filter(request, candidates)
