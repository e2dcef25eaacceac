"""Other routers' policies re-implemented as plugins so the benchmarks run them inside this EPP
(docs/benchmarks.md). The registry loads this package only when a config names one of its types,
so `epp serve` with GIE's or llm-d's configs never imports it (nor the simulator it uses)."""
