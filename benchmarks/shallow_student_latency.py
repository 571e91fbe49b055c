"""Would a DistilBERT-style student (the teacher's first transformer layers) meet the latency bar?

Single-example CPU latency, same process and threads, side by side: the classifier teacher's
encoder through sentence-transformers' `encode` (how the teacher serves), the same encoder as a
bare Hugging Face forward pass with all 6 layers, and truncated to its first 2 and 1 layers
(embeddings + layers + mean pooling, no head: a lower bound for such a student). The project's
bar for a student is 1/10 of the teacher's latency.

    python benchmarks/shallow_student_latency.py [--quick] [--data DIR] [--threads N]

Texts: SST-2's test sentences from --data DIR (the folder holding sst2/), else the quickstart's
test tickets. Ends with: RESULT teacher_ms=... full_ms=... layers2_ms=... layers1_ms=...
layers1_ratio=... layers2_ratio=...
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def read_texts(data: Path | None, limit: int) -> list[str]:
    if data is not None:
        path = data / "sst2" / "sentiment-test"
        if not path.is_file():
            raise SystemExit(f"{path} not found (pass --data DIR, the folder that holds sst2/)")
        texts = [line.rsplit("\t", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        path = REPO / "configs" / "data" / "quickstart" / "test.jsonl"
        texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [text for text in texts if text][:limit]


class TimedCall:
    """One forward pass as a Predictor-shaped object, so that trainer.evaluation.latency_ms times it
    exactly as it times the students and teachers it evaluates."""

    def __init__(self, forward: Callable[[str], object]) -> None:
        self.forward = forward

    def predict_proba(self, texts: list[str]) -> object:
        return self.forward(texts[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="60 texts instead of 300")
    parser.add_argument("--data", type=Path, default=None, help="folder holding sst2/ [default: quickstart tickets]")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    texts = read_texts(args.data, 60 if args.quick else 300)  # a wrong --data fails before the slow imports

    import torch
    from transformers import AutoModel, AutoTokenizer

    from factory.teachers.classifier import default_encoder_path, load_encoder
    from trainer.evaluation import latency_ms

    torch.set_num_threads(args.threads)
    path = default_encoder_path()
    encoder = load_encoder(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()

    def forward(network: torch.nn.Module) -> Callable[[str], object]:
        def predict(text: str) -> object:
            with torch.inference_mode():
                batch = tokenizer([text], return_tensors="pt", truncation=True, max_length=128)
                hidden = network(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1)
                return (hidden * mask).sum(1) / mask.sum(1)

        return predict

    def truncated(layers: int) -> torch.nn.Module:
        network = copy.deepcopy(model)
        network.encoder.layer = network.encoder.layer[:layers]
        return network

    calls = {
        "teacher_ms": lambda text: encoder.encode([text], batch_size=1),
        "full_ms": forward(model),
        "layers2_ms": forward(truncated(2)),
        "layers1_ms": forward(truncated(1)),
    }
    results = {name: latency_ms(TimedCall(call), texts, n=len(texts))["p50"] for name, call in calls.items()}
    teacher = results["teacher_ms"]
    for name, value in results.items():
        print(f"{name[:-3]:>8}: p50 {value:6.2f} ms  ({value / teacher:.3f} of the teacher)")
    print(
        " ".join(["RESULT"] + [f"{k}={v:.3f}" for k, v in results.items()])
        + f" layers1_ratio={results['layers1_ms'] / teacher:.3f} layers2_ratio={results['layers2_ms'] / teacher:.3f}"
    )


if __name__ == "__main__":
    main()
