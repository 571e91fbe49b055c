"""Where a local teacher's torch batches run: the event loop's thread or a worker thread.

A run keeps one event loop for its life (factory/aio.py). A batched local teacher handed to
`asyncio.to_thread` runs its torch ops on a worker thread that then lives as long as that
loop, beside the main thread, which trains the teacher before and the student after. Each of
the two threads keeps its own OpenMP pool. This script measures, side by side in one process
(rounds alternate; each round has its own loop, closed after it, so its worker thread ends):

1. the classifier teacher labelling the texts (texts/s), and
2. then, with that round's loop still open, a student-sized training loop on the main thread
   (a bag-of-embeddings net, batch 32; steps/s),

once with `computes_on_loop_thread` as shipped (the loop's thread) and once forced to the
worker thread. The teacher is the offline MiniLM encoder with a head trained here.

    python benchmarks/teacher_thread.py [--quick] [--data DIR] [--rounds N]

Texts: Banking77's test texts from --data DIR (the folder holding banking77/; the teacher
trains on them too), else the quickstart's pool (the teacher trains on its 84 examples).
Ends with: RESULT label_speedup=... train_speedup=... rounds=... (loop thread over worker
thread; above 1: the loop's thread is faster).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from factory.aio import EventLoop  # noqa: E402
from factory.teachers import ClassifierTeacherConfig, TeacherRequest, build_teacher, train_encoder_head  # noqa: E402
from factory.teachers.classifier import ClassifierTeacher  # noqa: E402
from trainer.bag_model import BagNet  # noqa: E402
from trainer.evaluation import read_text_table  # noqa: E402


def read_texts(data: Path | None, limit: int) -> tuple[list[str], list[str], list[str]]:
    """(texts to label, the teacher's training texts, their labels): Banking77's test split for all
    three, else the quickstart's pool to label and its teacher's examples to train on."""
    if data is not None:
        path = data / "banking77" / "test.csv"
        if not path.is_file():
            raise SystemExit(f"{path} not found (pass --data DIR, the folder that holds banking77/)")
        frame = read_text_table(path, ["text", "category"], "Banking77 test file").head(limit)
        texts = frame["text"].to_list()
        return texts, texts, frame["category"].to_list()
    quickstart = REPO / "configs" / "data" / "quickstart"
    examples = read_text_table(quickstart / "teacher_train.jsonl", ["text", "label"], "quickstart examples")
    pool = read_text_table(quickstart / "tickets.jsonl", ["text"], "quickstart pool").head(limit)
    return pool["text"].to_list(), examples["text"].to_list(), examples["label"].to_list()


def train_steps(steps: int) -> float:
    """Seconds for `steps` Adam steps of a static-student-sized bag net on random ids (main thread)."""
    torch.manual_seed(0)
    net = BagNet(30523, 256, 12, space_dim=384, hidden=512, pooling="attention")
    sparse = torch.optim.SparseAdam(list(net.embedding.parameters()), lr=1e-3)
    dense = torch.optim.Adam(net.space_parameters() + list(net.output.parameters()), lr=1e-3)
    started = time.perf_counter()
    for _ in range(steps):
        ids = torch.randint(1, 30523, (32, 24))
        loss = net(ids).logsumexp(-1).mean()
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        sparse.step()
        dense.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="400 texts, 150 training steps, 2 rounds")
    parser.add_argument("--data", type=Path, default=None, help="folder holding banking77/ (else the quickstart)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per placement (alternating)")
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args()
    n_texts, steps, rounds = (400, 150, 2) if args.quick else (args.texts, args.steps, args.rounds)

    texts, train_texts, train_labels = read_texts(args.data, n_texts)
    head_dir = Path(tempfile.mkdtemp(prefix="teacher_thread_"))
    # the main thread's torch work before labelling, as a run's teacher_training step does
    train_encoder_head(train_texts, train_labels, head_dir, finetune="head", seed=0)
    requests = [TeacherRequest.chat(text) for text in texts]
    totals = {placement: {"label": 0.0, "train": 0.0} for placement in ("loop", "worker")}
    for round_index in range(rounds):
        for placement in ("loop", "worker"):
            teacher = build_teacher(ClassifierTeacherConfig(model=str(head_dir), kind="encoder_head", device="cpu"))
            teacher.computes_on_loop_thread = placement == "loop"
            loop = EventLoop()
            started = time.perf_counter()
            loop.run(teacher.generate(requests))
            label_s = time.perf_counter() - started
            train_s = train_steps(steps)  # the loop (and any worker thread of it) still alive, as in a run
            loop.close()
            totals[placement]["label"] += label_s
            totals[placement]["train"] += train_s
            print(
                f"round {round_index} {placement:6s}: labelling {len(texts) / label_s:6.0f} texts/s, "
                f"training {steps / train_s:6.1f} steps/s",
                flush=True,
            )
    assert ClassifierTeacher.computes_on_loop_thread, "the shipped placement is the loop's thread"
    label_speedup = totals["worker"]["label"] / totals["loop"]["label"]
    train_speedup = totals["worker"]["train"] / totals["loop"]["train"]
    print(f"RESULT label_speedup={label_speedup:.3f} train_speedup={train_speedup:.3f} rounds={rounds}")


if __name__ == "__main__":
    main()
