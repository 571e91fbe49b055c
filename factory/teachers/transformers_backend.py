"""A local Hugging Face causal LM (CPU or GPU), batched and left-padded.

Logprobs are TRUE model logprobs: log_softmax of the raw logits (`output_logits=True`),
not the processed `scores` (which temperature/top-p warp and mask with -inf). Requests
with the same sampling parameters are batched together; greedy requests with n > 1
return n copies of the one greedy sample (greedy decoding has only one).
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.config import TransformersTeacherConfig
from factory.teachers.local_models import (
    chat_prompt_ids,
    directory_fingerprint,
    load_tokenizer,
    require_model_dir,
    resolve_device,
    resolve_dtype,
)
from factory.teachers.managed import ManagedTeacher
from factory.teachers.tokenizers import tokenizer_hash


class TransformersTeacher(ManagedTeacher):
    batched = True
    computes_on_loop_thread = True  # torch on the caller's thread (ManagedTeacher says why)

    def __init__(self, config: TransformersTeacherConfig, **machinery: Any):
        from transformers import AutoModelForCausalLM

        self.config = config
        directory = require_model_dir(config.model, "transformers model")
        self.device = resolve_device(config.device)
        self.tokenizer = load_tokenizer(directory, padding_side="left")
        if self.tokenizer.pad_token_id is None:  # batched generation needs an explicit pad id
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = resolve_dtype(config.dtype, self.device)
        self.model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype).to(self.device).eval()
        identity = TeacherIdentity("transformers", str(config.model), str(config.model), tokenizer_hash(self.tokenizer))
        super().__init__(identity, **machinery)
        self.cache_salt = f"{directory_fingerprint(directory)}:{dtype}"

    def _chunk_size(self) -> int:
        return self.config.batch_size

    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        # Same sampling parameters -> one `generate` call (sorted groups keep order by index).
        def params(index: int) -> tuple:
            request = requests[index]
            return (request.n, request.temperature, request.top_p, request.max_tokens, request.stop,
                    request.seed, request.top_logprobs)  # fmt: skip

        results: list[Generation | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: (repr(params(i)), i))
        for _, group in groupby(order, key=lambda i: repr(params(i))):
            indices = list(group)
            for index, generation in zip(indices, self._generate_same_params([requests[i] for i in indices])):
                results[index] = generation
        return results  # type: ignore[return-value]

    def _generate_same_params(self, requests: list[TeacherRequest]) -> list[Generation]:
        import torch

        first = requests[0]
        prompts = [chat_prompt_ids(self.tokenizer, request) for request in requests]
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        sample = first.temperature > 0
        copies = first.n if sample else 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": first.max_tokens,
            "do_sample": sample,
            "num_return_sequences": copies,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "output_logits": True,
            "return_dict_in_generate": True,
        }
        if sample:
            kwargs.update(temperature=first.temperature, top_p=first.top_p, top_k=0)
        else:  # unset sampling knobs a checkpoint's generation_config may carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
        if first.seed is not None:
            torch.manual_seed(first.seed)
        with torch.inference_mode():
            out = self.model.generate(**batch, **kwargs)
        new_tokens = out.sequences[:, batch["input_ids"].shape[1] :].cpu()
        # [rows, steps, vocab] true logprobs; rows = prompts * copies, prompt-major.
        logprobs = torch.log_softmax(torch.stack(out.logits, dim=1).float(), dim=-1).cpu()
        generations = []
        for p, request in enumerate(requests):
            samples = []
            for c in range(copies):
                row = p * copies + c
                samples.append(self._sample(new_tokens[row], logprobs[row], request))
            if not sample:
                samples = [samples[0]] + [Sample(**samples[0].as_record()) for _ in range(request.n - 1)]
            usage = Usage(len(prompts[p]), sum(len(s.token_ids) for s in samples))
            generations.append(
                Generation(request, self.identity, samples=samples, usage=usage, token_ids_source="engine")
            )
        return generations

    def _sample(self, tokens: Any, logprobs: Any, request: TeacherRequest) -> Sample:
        import torch

        ids = tokens.tolist()
        length, finish = len(ids), "length"
        eos = self.tokenizer.eos_token_id
        if eos in ids:  # the EOS token is kept (a student learns to stop), nothing after it
            length, finish = ids.index(eos) + 1, "stop"
        text = self.tokenizer.decode(ids[:length], skip_special_tokens=True)
        if request.stop:
            cut = min((text.find(s) for s in request.stop if s in text), default=-1)
            if cut >= 0:
                # Keep the tokens up to the one that completed the stop string.
                text, finish = text[:cut], "stop"
                length = min(length, self._tokens_covering(ids, cut + 1))
        ids = ids[:length]
        positions = torch.arange(length)
        sampled = logprobs[positions, torch.tensor(ids, dtype=torch.long)] if length else torch.empty(0)
        result = Sample(text=text, finish_reason=finish, token_ids=ids, logprobs=sampled.tolist())
        if request.top_logprobs > 0 and length:
            top = torch.topk(logprobs[:length], request.top_logprobs, dim=-1)
            result.top_ids, result.top_logprobs = top.indices.tolist(), top.values.tolist()
        return result

    def _tokens_covering(self, ids: list[int], chars: int) -> int:
        """The fewest leading tokens whose decoded text reaches `chars` characters."""
        for count in range(1, len(ids) + 1):
            if len(self.tokenizer.decode(ids[:count], skip_special_tokens=True)) >= chars:
                return count
        return len(ids)
