"""The P/D routing sidecar: a reverse proxy in front of a decode engine that runs the remote prefill
leg named by the EPP's `x-prefiller-host-port` header before decoding locally (llm-d's pd-sidecar)."""
