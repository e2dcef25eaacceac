"""Run inference-perf (kubernetes-sigs/inference-perf, a separate Python 3.12 install) and our load
generator against the same kind of stack — 4 simulated Llama-3.1-8B servers behind Envoy and the EPP
with GIE's default profile — on the same shared-prefix shape and rate, and print both tools'
figures. Used once to check our load generator against an established one (docs/benchmarks.md);
not part of `make test` or `make bench`.

    python3.12 -m venv /tmp/venv-ip && /tmp/venv-ip/bin/pip install inference-perf tokenizers
    .venv/bin/python bench/compare_inference_perf.py --inference-perf /tmp/venv-ip/bin/inference-perf

inference-perf needs a Hugging Face tokenizer and the hub is unreachable, so a word-level one is
written locally over the words our workloads use (2-5 letters: one simulator token each), which
makes the lengths it asks for the lengths the simulators see.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from epp.bench.loadgen import run_realtime
from epp.bench.summary import summarize
from epp.bench.text import TextGenerator
from epp.bench.workload import WorkloadSpec, generate
from epp.stack.stack import Stack, StackConfig

SHAPE = {
    "num_groups": 16,
    "num_prompts_per_group": 8,
    "system_prompt_len": 1000,
    "question_len": 100,
    "output_len": 64,
}


def build_tokenizer(directory: Path) -> None:
    """A Hugging Face word-level tokenizer (tokenizer.json written directly, no `tokenizers` here)."""
    words = sorted(set(TextGenerator(0).text(100_000).split()))
    specials = ["[UNK]", "[PAD]", "<s>", "</s>"]
    vocab = {token: i for i, token in enumerate([*specials, *words])}
    added = [
        {
            "id": i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, t in enumerate(specials)
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "[UNK]"},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]"}
    (directory / "tokenizer_config.json").write_text(
        json.dumps({**config, "bos_token": "<s>", "eos_token": "</s>"})
    )


def stack_config(run_dir: Path) -> StackConfig:
    return StackConfig(run_dir=run_dir, sims=4, sim_args=["--profile=llama-3.1-8b-h100"])


async def inference_perf(tool: str, work: Path, rate: float, seconds: float) -> dict[str, Any]:
    """inference-perf's summary of the successful requests. `work` must be absolute: the tool
    runs inside it and reads the config path it is given relative to there."""
    build_tokenizer(work / "tokenizer")
    reports = work / "reports"
    shutil.rmtree(reports, ignore_errors=True)  # a previous run's summary must not be read as this one's
    async with Stack(stack_config(work / "stack-ip")) as stack:
        config = {
            "api": {"type": "completion", "streaming": True},
            "data": {"type": "shared_prefix", "shared_prefix": SHAPE},
            "load": {"type": "poisson", "stages": [{"rate": rate, "duration": seconds}], "num_workers": 2},
            "server": {
                "type": "vllm",
                "model_name": "sim-model",
                "base_url": stack.gateway_url,
                "ignore_eos": True,
            },
            "tokenizer": {"pretrained_model_name_or_path": str(work / "tokenizer")},
            "storage": {"local_storage": {"path": str(reports)}},
        }
        (work / "ip.yaml").write_text(yaml.safe_dump(config))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        process = await asyncio.create_subprocess_exec(
            tool, "--config_file", str(work / "ip.yaml"), env=env, cwd=work
        )
        if await process.wait() != 0:
            raise RuntimeError(f"inference-perf exited with {process.returncode}")
    found = sorted(reports.rglob("summary_lifecycle_metrics.json"))
    if not found:
        raise RuntimeError(f"inference-perf wrote no summary_lifecycle_metrics.json under {reports}")
    summary: dict[str, Any] = json.loads(found[-1].read_text())["successes"]
    return summary


async def ours(work: Path, rate: float, seconds: float) -> dict[str, float]:
    spec = WorkloadSpec.model_validate(
        {
            "name": "compare",
            "data": {"type": "shared_prefix", **SHAPE, "requests": int(rate * seconds)},
            "load": {"rates": [rate]},
        }
    )
    async with Stack(stack_config(work / "stack-ours")) as stack:
        result = await run_realtime(
            generate(spec, rate), stack.gateway_url, "sim-model", [s.name for s in stack.sims]
        )
    return summarize(result).as_dict()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--inference-perf", required=True, help="the inference-perf executable")
    parser.add_argument(
        "--work", type=Path, default=Path("run/compare-inference-perf"), help="working dir (made absolute)"
    )
    parser.add_argument("--rate", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    work = args.work.resolve()
    theirs = await inference_perf(args.inference_perf, work, args.rate, args.seconds)
    mine = await ours(work, args.rate, args.seconds)
    print_comparison(theirs, mine)


def print_comparison(theirs: dict[str, Any], mine: dict[str, float]) -> None:
    """The figures both tools report, side by side (latencies in ms)."""
    latency = theirs["latency"]
    rows = [
        ("completed requests", theirs["count"], mine["completed"]),
        ("requests/s", theirs["throughput"]["requests_per_sec"], mine["requests_per_s"]),
        ("output tokens/s", theirs["throughput"]["output_tokens_per_sec"], mine["output_tokens_per_s"]),
        ("TTFT p50 ms", latency["time_to_first_token"]["median"] * 1e3, mine["ttft_p50"] * 1e3),
        ("TTFT p90 ms", latency["time_to_first_token"]["p90"] * 1e3, mine["ttft_p90"] * 1e3),
        ("e2e p50 ms", latency["request_latency"]["median"] * 1e3, mine["e2e_p50"] * 1e3),
        ("e2e p99 ms", latency["request_latency"]["p99"] * 1e3, mine["e2e_p99"] * 1e3),
    ]
    sys.stdout.write(f"{'figure':<22}{'inference-perf':>16}{'ours':>12}\n")
    for name, a, b in rows:
        sys.stdout.write(f"{name:<22}{a:>16.1f}{b:>12.1f}\n")


if __name__ == "__main__":
    asyncio.run(main())
