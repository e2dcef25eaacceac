"""vLLM-compatible model-server simulator: a clock-agnostic engine model (``engine``) and aiohttp
servers around it (``server``, ``cluster``, ``cli``). See docs/simulator.md."""
