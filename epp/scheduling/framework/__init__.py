"""The scheduling framework: plugin interfaces, profiles, the plugin scheduler and the registry."""

from epp.scheduling.framework.plugin import (
    DataConsumer,
    DataKey,
    DataProducer,
    EndpointObserver,
    Filter,
    NoParams,
    Picker,
    Plugin,
    PluginContext,
    PluginParams,
    PluginReference,
    PluginUser,
    PreRequest,
    ProfileHandler,
    ResponseComplete,
    ResponseReceived,
    SaturationDetector,
    Scorer,
)
from epp.scheduling.framework.profile import SchedulerProfile
from epp.scheduling.framework.registry import register
from epp.scheduling.framework.scheduler import PluginScheduler

__all__ = [
    "DataConsumer",
    "DataKey",
    "DataProducer",
    "EndpointObserver",
    "Filter",
    "NoParams",
    "Picker",
    "Plugin",
    "PluginContext",
    "PluginParams",
    "PluginReference",
    "PluginScheduler",
    "PluginUser",
    "PreRequest",
    "ProfileHandler",
    "ResponseComplete",
    "ResponseReceived",
    "SaturationDetector",
    "SchedulerProfile",
    "Scorer",
    "register",
]
