"""What the metrics port serves besides /metrics: the decision records as JSON, the pool's live
state, a server-sent event stream of both, and the web view that shows them (`static/`)."""

from epp.observe.view import LiveView, prefix_indexes

__all__ = ["LiveView", "prefix_indexes"]
