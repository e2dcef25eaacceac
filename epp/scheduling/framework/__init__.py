"""The scheduling framework: its extension points, profiles and the plugin scheduler."""

from epp.scheduling.framework.extensions import Filter, Picker, ProfileHandler, Scorer
from epp.scheduling.framework.profile import SchedulerProfile
from epp.scheduling.framework.scheduler import PluginScheduler

__all__ = ["Filter", "Picker", "PluginScheduler", "ProfileHandler", "SchedulerProfile", "Scorer"]
