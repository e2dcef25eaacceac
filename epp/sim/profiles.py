"""Named hardware/model profiles: the figures the engine model turns into step times and capacity.

Every figure is derived in docs/simulator.md (section "Profiles") from public model configs, H100
data-sheet numbers and vLLM defaults; the short notes here name the source of each field. Step time
(see ``Profile.step_seconds``) is additive, in seconds::

    base + decode_seq * decode_seqs + kv_read_token * decode_context_tokens
         + prefill_token * prefill_tokens + attention_pair * prefill_attention_pairs
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

H100_HBM_BYTES_PER_S = 3.35e12
"""H100 SXM5 HBM3 bandwidth (NVIDIA H100 data sheet)."""
H100_BF16_FLOPS = 989e12
"""H100 SXM5 dense BF16 tensor throughput (NVIDIA H100 data sheet)."""
HBM_EFFICIENCY = 0.85
"""Share of peak HBM bandwidth a decode step achieves (typical for large GEMV / paged attention)."""
MFU = 0.5
"""Model FLOP utilisation assumed for prefill and batched decode compute."""
RDMA_BYTES_PER_S = 40e9
"""One 400 Gb/s ConnectX-7 port per GPU at about 80 % efficiency (NIXL over RDMA)."""


@dataclass(frozen=True, slots=True)
class Profile:
    """Capacity, scheduler limits and step-time coefficients of one model on one GPU setup."""

    name: str
    model: str
    block_size: int
    num_gpu_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    kv_bytes_per_token: int
    step_base_s: float
    decode_seq_s: float
    kv_read_token_s: float
    prefill_token_s: float
    attention_pair_s: float
    kv_transfer_base_s: float
    kv_transfer_token_s: float
    max_waiting: int = 1000
    max_loras: int = 1

    def step_seconds(
        self, decode_seqs: int, decode_context_tokens: int, prefill_tokens: int, attention_pairs: int
    ) -> float:
        """Duration of one engine step with the given batch composition."""
        return (
            self.step_base_s
            + self.decode_seq_s * decode_seqs
            + self.kv_read_token_s * decode_context_tokens
            + self.prefill_token_s * prefill_tokens
            + self.attention_pair_s * attention_pairs
        )

    def kv_transfer_seconds(self, tokens: int) -> float:
        """Time for a decode server to pull ``tokens`` tokens of KV from a prefill server."""
        return self.kv_transfer_base_s + self.kv_transfer_token_s * tokens

    def with_overrides(self, **changes: Any) -> Profile:
        """A copy with the given fields replaced; ``None`` values are ignored (unset CLI flags)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _kv_bytes(layers: int, kv_heads: int, head_dim: int, dtype_bytes: int = 2) -> int:
    return 2 * layers * kv_heads * head_dim * dtype_bytes


_LLAMA_8B_PARAMS = 8.03e9
_LLAMA_8B_KV = _kv_bytes(layers=32, kv_heads=8, head_dim=128)  # 131,072 B (config.json of Llama-3.1-8B)
_QWEN_32B_PARAMS = 32.8e9
_QWEN_32B_KV = _kv_bytes(layers=64, kv_heads=8, head_dim=128)  # 262,144 B (config.json of Qwen3-32B)
_TP2 = 2

LLAMA_3_1_8B_H100 = Profile(
    name="llama-3.1-8b-h100",
    model="meta-llama/Llama-3.1-8B-Instruct",
    block_size=16,  # vLLM default --block-size
    # 0.9 x 79.6 GiB - 15.0 GiB weights - 2.9 GiB activations/graphs = 53.8 GiB of KV = 440,700 tokens;
    # the 2.9 GiB overhead is what makes vLLM's published 542,960 tokens on a 94 GB H100 NVL add up.
    num_gpu_blocks=27_544,
    max_num_seqs=1024,  # vLLM V1 default for the API server on GPUs with >= 70 GiB
    max_num_batched_tokens=8192,  # same source
    max_model_len=131_072,  # max_position_embeddings
    kv_bytes_per_token=_LLAMA_8B_KV,
    # weights read once per step at 85 % of HBM bandwidth (5.6 ms) + ~0.4 ms scheduling/launch
    step_base_s=2 * _LLAMA_8B_PARAMS / (H100_HBM_BYTES_PER_S * HBM_EFFICIENCY) + 0.4e-3,
    decode_seq_s=2 * _LLAMA_8B_PARAMS / (H100_BF16_FLOPS * MFU),  # 2 FLOPs per parameter per token
    kv_read_token_s=_LLAMA_8B_KV / (H100_HBM_BYTES_PER_S * HBM_EFFICIENCY),
    prefill_token_s=2 * _LLAMA_8B_PARAMS / (H100_BF16_FLOPS * MFU),
    attention_pair_s=4 * 32 * 4096 / (H100_BF16_FLOPS * MFU),  # 4 x layers x (q heads x head_dim) FLOPs
    kv_transfer_base_s=2e-3,  # NIXL notification + descriptor setup, order of a millisecond
    kv_transfer_token_s=_LLAMA_8B_KV / RDMA_BYTES_PER_S,
)

QWEN3_32B_H100_TP2 = Profile(
    name="qwen3-32b-h100-tp2",
    model="Qwen/Qwen3-32B",
    block_size=16,
    num_gpu_blocks=19_208,  # 307,328 tokens per 2 x H100 instance, as reported by llm-d's benchmark
    max_num_seqs=1024,
    max_num_batched_tokens=8192,
    max_model_len=40_960,
    kv_bytes_per_token=_QWEN_32B_KV,
    # each GPU reads half the weights; 128 all-reduces per step (2 per layer) at ~12 us each
    step_base_s=2 * _QWEN_32B_PARAMS / _TP2 / (H100_HBM_BYTES_PER_S * HBM_EFFICIENCY) + 128 * 12e-6 + 0.4e-3,
    decode_seq_s=2 * _QWEN_32B_PARAMS / (_TP2 * H100_BF16_FLOPS * MFU),
    kv_read_token_s=_QWEN_32B_KV / _TP2 / (H100_HBM_BYTES_PER_S * HBM_EFFICIENCY),
    prefill_token_s=2 * _QWEN_32B_PARAMS / (_TP2 * H100_BF16_FLOPS * MFU),
    attention_pair_s=4 * 64 * 8192 / (_TP2 * H100_BF16_FLOPS * MFU),
    kv_transfer_base_s=2e-3,
    kv_transfer_token_s=_QWEN_32B_KV / (_TP2 * RDMA_BYTES_PER_S),  # one NIC per GPU
)

TINY_TEST = Profile(
    name="tiny-test",
    model="tiny-test",
    block_size=16,
    num_gpu_blocks=256,
    max_num_seqs=8,
    max_num_batched_tokens=256,
    max_model_len=2048,
    kv_bytes_per_token=1024,
    # invented round figures: small capacity so tests reach limits fast, millisecond steps
    step_base_s=1e-3,
    decode_seq_s=1e-4,
    kv_read_token_s=0.0,
    prefill_token_s=2e-5,
    attention_pair_s=0.0,
    kv_transfer_base_s=5e-4,
    kv_transfer_token_s=1e-6,
    max_waiting=64,
    max_loras=2,
)

PROFILES: dict[str, Profile] = {p.name: p for p in (LLAMA_3_1_8B_H100, QWEN3_32B_H100_TP2, TINY_TEST)}
DEFAULT_PROFILE = LLAMA_3_1_8B_H100.name


def get_profile(name: str) -> Profile:
    """The named profile; raises ``KeyError`` listing the known names."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(sorted(PROFILES))}") from None
