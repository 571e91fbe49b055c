"""The lab's models: one tokenizer, a Llama teacher trained here, random-initialised students, greedy scoring.

The tokenizer is a byte-level BPE that splits every digit into its own token (merges
never span digits), so a model sees numbers digit by digit; words and the fixed
phrases of the solutions merge into a few tokens each. The chat template is the one
tests/fixtures/tiny_lm.py uses, so the prompt ids the pipeline sends (through
`chat_prompt_ids`) are the ids the teacher was trained on.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.lab.task import MAX_SOLUTION_TOKENS, Problem, is_correct, make_problem

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MAX_POSITIONS = 256


@dataclass(frozen=True)
class ModelSize:
    hidden: int
    layers: int
    heads: int
    intermediate: int


# head_dim = hidden / heads = 64 for both: the head size vLLM's CPU attention is known to accept.
# Two layers: on the shared 2-core CPU a 4-layer teacher got through only 400 steps of 64 in
# 24 minutes and reached 0.115 exact match; half the depth and half the batch give 4x the steps.
TEACHER_SIZE = ModelSize(hidden=128, layers=2, heads=2, intermediate=512)
STUDENT_SIZE = ModelSize(hidden=64, layers=2, heads=1, intermediate=256)


def build_tokenizer(corpus: list[str], vocab_size: int = 320) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: Any, size: ModelSize, seed: int) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_hidden_layers=size.layers,
        num_attention_heads=size.heads,
        num_key_value_heads=size.heads,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def parameter_count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def prompt_text(tokenizer: Any, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def encode_examples(tokenizer: Any, problems: list[Problem]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, solution ids + eos) per problem: the same split the project's SFT trainer makes."""
    prompts = tokenizer([prompt_text(tokenizer, p.question) for p in problems], add_special_tokens=False)["input_ids"]
    solutions = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    return [(prompt, solution + [tokenizer.eos_token_id]) for prompt, solution in zip(prompts, solutions)]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch; labels are -100 on the prompt and the padding (loss on the solution only)."""
    width = max(len(p) + len(s) for p, s in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (prompt, solution) in enumerate(examples):
        length = len(prompt) + len(solution)
        ids[row, :length] = torch.tensor(prompt + solution)
        labels[row, len(prompt) : length] = torch.tensor(solution)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_teacher(
    model: Any,
    tokenizer: Any,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    exclude: set[str],
    seed: int,
    log_every: int = 100,
    validation: list[Problem] | None = None,
) -> list[float]:
    """Next-token loss on solutions of freshly generated problems (none of them in `exclude`).

    With `validation`, exact match on those problems is printed at every fifth of training.

    AdamW, linear warm-up over the first 5% of steps, then cosine decay to 10% of lr.
    """
    rng = random.Random(seed)
    problems: list[Problem] = []
    while len(problems) < steps * batch_size:
        problem = make_problem(rng)
        if problem.question not in exclude:
            problems.append(problem)
    examples = encode_examples(tokenizer, problems)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, steps // 20)
    losses: list[float] = []
    started = time.time()
    model.train()
    for step in range(steps):
        scale = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, scale)
        batch = collate(examples[step * batch_size : (step + 1) * batch_size], tokenizer.pad_token_id)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = sum(losses[-log_every:]) / log_every
            print(f"  teacher step {step + 1}/{steps}  loss {recent:.4f}  {time.time() - started:.0f}s", flush=True)
        if validation and (step + 1) % max(1, steps // 5) == 0:
            accuracy, _ = exact_match(model, tokenizer, validation)
            print(f"  teacher step {step + 1}: exact match {accuracy:.3f} on {len(validation)} validation problems")
            model.train()
    model.eval()
    return losses


@torch.no_grad()
def greedy_solutions(model: Any, tokenizer: Any, questions: list[str], batch_size: int = 256) -> list[str]:
    """Temperature-0 solutions, batched with left padding (the eos token ends each one)."""
    tokenizer.padding_side = "left"
    model.eval()
    texts = []
    for start in range(0, len(questions), batch_size):
        chunk = [prompt_text(tokenizer, q) for q in questions[start : start + batch_size]]
        encoded = tokenizer(chunk, add_special_tokens=False, padding=True, return_tensors="pt")
        output = model.generate(
            **encoded,
            do_sample=False,
            max_new_tokens=MAX_SOLUTION_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts += tokenizer.batch_decode(output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def exact_match(model: Any, tokenizer: Any, problems: list[Problem]) -> tuple[float, dict[int, float]]:
    """Share of problems whose greedy solution states the right final answer, overall and per level."""
    texts = greedy_solutions(model, tokenizer, [p.question for p in problems])
    right = [is_correct(text, p.answer) for text, p in zip(texts, problems)]
    by_level: dict[int, list[bool]] = {}
    for ok, p in zip(right, problems):
        by_level.setdefault(p.level, []).append(ok)
    return sum(right) / len(right), {level: sum(v) / len(v) for level, v in sorted(by_level.items())}


def save(model: Any, tokenizer: Any, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
