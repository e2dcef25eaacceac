"""The EPP's own Prometheus metrics (GIE's names) and the HTTP server that exposes them."""
