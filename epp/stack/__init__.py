"""Running the product locally: Envoy, the EPP and simulated model servers as real processes."""
