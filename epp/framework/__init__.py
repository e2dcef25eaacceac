"""The plugin core: what a plugin is, its parameters and context, the data keys plugins share,
the registry of plugin types by name, and per-plugin latency timing."""

from epp.framework.plugin import (
    DataConsumer,
    DataKey,
    Extension,
    ImpliedPlugin,
    NoParams,
    ParameterUpgrade,
    Plugin,
    PluginContext,
    PluginParams,
    PluginReference,
    PluginUser,
)
from epp.framework.registry import register

__all__ = [
    "DataConsumer",
    "DataKey",
    "Extension",
    "ImpliedPlugin",
    "NoParams",
    "ParameterUpgrade",
    "Plugin",
    "PluginContext",
    "PluginParams",
    "PluginReference",
    "PluginUser",
    "register",
]
