"""The real pipeline on the lab teacher: a run config written here, run by `stillhouse run`.

Two configs share one run (same name and run directory): the curated one generates
(respond: n samples with top-k logprobs), curates (consistency on the final answer,
then entropy) and publishes `lab`; the uncurated one finds the respond step done (same
task, teacher and seeds, so the same fingerprint), skips curation and publishes
`lab-uncurated` from the very same teacher samples. Both go through the CLI in a
subprocess, exactly as a user would run them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from benchmarks.lab.task import MAX_SOLUTION_TOKENS, Problem, extract_answer

REPO = Path(__file__).resolve().parents[2]
RUN_NAME = "lab"
CURATED, UNCURATED = "lab", "lab-uncurated"
# Curation thresholds, fixed before any measurement: drop a row when at most 2 of its
# 5 samples share the majority answer, and the 20% most uncertain of the rows left.
MIN_CONSISTENCY = 0.5
ENTROPY_MAX_QUANTILE = 0.8
VLLM_ENV = {
    # One OpenMP thread pinned to one core: on a shared 2-core CPU vLLM's default (both
    # cores) generated at half the speed (60 prompts x n=5 x 32 tokens, top-20: 103 s vs 49 s).
    "VLLM_CPU_OMP_THREADS_BIND": "0",
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_HOST_IP": "127.0.0.1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@dataclass
class PipelineSettings:
    samples: int = 5
    temperature: float = 0.8
    top_logprobs: int = 20
    max_tokens: int = MAX_SOLUTION_TOKENS
    backend: str = "vllm"  # vllm (in-process engine), openai (vLLM's OpenAI server), transformers


def vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def write_seeds(problems: list[Problem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": p.question}) + "\n" for p in problems), encoding="utf-8")
    return path


def teacher_section(backend: str, teacher_dir: Path, base_url: str | None = None) -> dict[str, Any]:
    if backend == "vllm":
        return {
            "backend": "vllm",
            "model": str(teacher_dir),
            "dtype": "float32",
            "max_model_len": 256,
            "enforce_eager": True,
        }
    if backend == "openai":
        # vLLM's server sends top-k tokens as text; ask it for ids and name the tokenizer
        # so the stored token ids are the engine's own.
        return {
            "backend": "openai",
            "model": str(teacher_dir),
            "base_url": base_url,
            "api_key_env": "LAB_NO_KEY",
            "tokenizer": str(teacher_dir),
            "return_token_ids": True,
            "concurrency": 8,
            "timeout_s": 600,
        }
    return {"backend": "transformers", "model": str(teacher_dir), "device": "cpu", "dtype": "float32", "batch_size": 64}


def run_config(
    work: Path, seeds: Path, teacher: dict[str, Any], settings: PipelineSettings, curated: bool
) -> dict[str, Any]:
    respond = {
        "type": "respond",
        "n": settings.samples,
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
        "top_logprobs": settings.top_logprobs,
        "batch_size": 256,
        "shard_size": 2000,
    }
    curation = [
        {"stage": "consistency", "mode": "final_answer", "min_consistency": MIN_CONSISTENCY},
        {"stage": "entropy", "max_quantile": ENTROPY_MAX_QUANTILE},
    ]
    return {
        "name": RUN_NAME,
        "run_dir": str(work / "runs"),
        "seeds": {"path": str(seeds), "columns": {"instruction": "question"}},
        "teacher": teacher,
        "tasks": [respond],
        "curation": curation if curated else [],
        "publish": {
            "name": CURATED if curated else UNCURATED,
            "root": str(work / "datasets_out"),
            "description": "Lab teacher answers to held-out arithmetic questions"
            + (", curated by consistency and entropy." if curated else ", uncurated."),
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def openai_server(teacher_dir: Path, log: Path, timeout_s: float = 600) -> Iterator[str]:
    """vLLM's OpenAI server on a free loopback port; yields its base URL, stops it by PID."""
    port = free_port()
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(teacher_dir),
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "256", "--no-enable-chunked-prefill", "--max-num-batched-tokens", "2048",
        "--max-logprobs", "20",
    ]  # fmt: skip
    with open(log, "w") as handle:
        server = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_ENV})
    try:
        import urllib.request

        deadline = time.time() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM's OpenAI server exited with {server.returncode}; see {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"vLLM's OpenAI server not ready after {timeout_s:.0f}s; see {log}") from None
                time.sleep(2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def stillhouse_run(config: dict[str, Any], path: Path, log: Path) -> None:
    """`stillhouse run CONFIG` in a subprocess: the CLI entry point, this checkout's code
    (through benchmarks/lab/cli.py, which only turns vLLM's chunked prefill off on CPU)."""
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    command = [sys.executable, "-m", "benchmarks.lab.cli", "run", str(path)]
    with open(log, "a") as handle:
        done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=path.parent)
    if done.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"stillhouse run {path} failed ({done.returncode}); last lines of {log}:\n{tail}")


def run_pipeline(work: Path, seeds: list[Problem], teacher_dir: Path, settings: PipelineSettings) -> dict[str, str]:
    """Publish the curated and the uncurated version; returns their refs."""
    seeds_path = write_seeds(seeds, work / "seeds.jsonl")
    log = work / "pipeline.log"
    log.write_text("")
    started = time.time()

    def both(teacher: dict[str, Any]) -> None:
        stillhouse_run(run_config(work, seeds_path, teacher, settings, curated=True), work / "lab.yaml", log)
        stillhouse_run(run_config(work, seeds_path, teacher, settings, curated=False), work / "lab-uncurated.yaml", log)

    if settings.backend == "openai":
        with openai_server(teacher_dir, work / "vllm_server.log") as base_url:
            both(teacher_section("openai", teacher_dir, base_url))
    else:
        both(teacher_section(settings.backend, teacher_dir))
    print(f"  pipeline ({settings.backend}) done in {time.time() - started:.0f}s; log {log}", flush=True)
    return {"curated": f"{CURATED}@latest", "uncurated": f"{UNCURATED}@latest"}


def majority_answer(answers: list[int | None]) -> int | None:
    """The most common stated answer (ties: the one stated first); None when no sample states one."""
    stated = [a for a in answers if a is not None]
    if not stated:
        return None
    counts = Counter(stated)
    best = max(counts.values())
    return next(a for a in stated if counts[a] == best)


def response_accuracy(frame: pl.DataFrame, truth: dict[str, int]) -> float:
    rows = frame.select("instruction", "response").iter_rows()
    right = [extract_answer(response) == truth[question] for question, response in rows]
    return sum(right) / len(right)


def signal_figures(frame: pl.DataFrame, truth: dict[str, int]) -> dict[str, Any]:
    """Accuracy of samples, majority votes, responses; error rate of what each stage dropped.

    `frame`: every row of the curated version (kept and rejected). Its `response` is the
    text curation judged: consistency replaces it by a majority-answer sample on every
    row it sees, so base_error and the drop errors all describe the same kind of text.
    """
    sample_right, majority_right, response_right = [], [], []
    dropped: dict[str, list[bool]] = {}
    for row in frame.select("instruction", "samples", "response", "drop_stage").iter_rows(named=True):
        answer = truth[row["instruction"]]
        stated = [extract_answer(s["text"]) for s in row["samples"] or []]
        sample_right += [a == answer for a in stated]
        majority_right.append(majority_answer(stated) == answer)
        right = extract_answer(row["response"]) == answer
        response_right.append(right)
        dropped.setdefault(row["drop_stage"] or "kept", []).append(right)

    def error(values: list[bool]) -> float:
        return 1.0 - sum(values) / len(values) if values else float("nan")

    kept = dropped.get("kept", [])
    return {
        "rows": frame.height,
        "single_sample_acc": sum(sample_right) / len(sample_right),
        "majority_acc": sum(majority_right) / len(majority_right),
        "base_error": error(response_right),
        "entropy_drop_error": error(dropped.get("entropy", [])),
        "consistency_drop_error": error(dropped.get("consistency", [])),
        "kept_acc": 1.0 - error(kept),
        "kept_rows": len(kept),
        "dropped_rows": {stage: len(v) for stage, v in dropped.items() if stage != "kept"},
    }
