"""Loading local models and tokenizers with one clear error when a path is wrong."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from factory.teachers.base import TeacherRequest
from factory.teachers.errors import ModelNotFoundError


def require_model_dir(path: str | Path, what: str = "model", needs: tuple[str, ...] = ("config.json",)) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ModelNotFoundError(f"{what} directory {directory} does not exist")
    missing = [name for name in needs if not (directory / name).exists()]
    if missing:
        raise ModelNotFoundError(f"{what} directory {directory} has no {', '.join(missing)}")
    return directory


def directory_fingerprint(directory: Path) -> str:
    """Names, sizes and modification times of a model directory's files: changes when
    the model is retrained or replaced in place (cheap: reads no weights)."""
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir() if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def load_tokenizer(name_or_path: str | Path, padding_side: str = "left") -> Any:
    """A local tokenizer (directory), or one already in the HF cache by name."""
    from transformers import AutoTokenizer

    path = Path(name_or_path).expanduser()
    try:
        return AutoTokenizer.from_pretrained(
            str(path) if path.exists() else str(name_or_path), padding_side=padding_side
        )
    except OSError as error:
        raise ModelNotFoundError(
            f"tokenizer {name_or_path!r} not found locally ({str(error).splitlines()[0]})"
        ) from None


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, dtype)


def chat_prompt_ids(tokenizer: Any, request: TeacherRequest) -> list[int]:
    """Prompt token ids through the tokenizer's chat template (the template adds any
    BOS itself, so the tokenizer adds no special tokens on top)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(request.openai_messages(), tokenize=False, add_generation_prompt=True)
    else:  # a base model without a template: the user turn is the prompt
        text = "\n\n".join(content for _, content in request.messages)
        return tokenizer(text)["input_ids"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def last_user_message(request: TeacherRequest) -> str:
    for role, content in reversed(request.messages):
        if role == "user":
            return content
    return request.messages[-1][1] if request.messages else ""
