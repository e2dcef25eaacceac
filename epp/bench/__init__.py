"""Benchmark harness: synthetic workloads, a real-time load generator, a virtual-time simulation
that runs the same scheduler against the same simulator engine, and the report they feed."""
