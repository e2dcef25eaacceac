"""LLM-aware endpoint picker for Envoy inference gateways."""

__version__ = "0.1.0"
