"""Between protocol and scheduling: candidates, admission, scheduling, and per-request bookkeeping."""

from epp.requestcontrol.director import Director, RoutedRequest

__all__ = ["Director", "RoutedRequest"]
