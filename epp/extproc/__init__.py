"""Envoy ext_proc: the gRPC service Envoy calls for every inference request."""
