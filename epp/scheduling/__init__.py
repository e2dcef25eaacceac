"""Choosing endpoints for a request: the scheduler interface and its implementations."""
