"""Local torch teachers compute their batches on the caller's (the event loop's) thread.

On a worker thread beside the main thread's own OpenMP pool, torch ran slower there and on the
main thread after it (factory/teachers/managed.py; benchmarks/teacher_thread.py)."""

from __future__ import annotations

import threading

import pytest
from fixtures.teacher_calls import generate_and_close as run
from fixtures.tiny_lm import build_tiny_sequence_classifier

from factory.teachers import ClassifierTeacherConfig, TeacherRequest, TransformersTeacherConfig, build_teacher


@pytest.mark.parametrize("backend", ["classifier", "transformers"])
def test_local_teacher_batches_run_on_the_callers_thread(backend, tiny_llama, tmp_path):
    if backend == "classifier":
        build_tiny_sequence_classifier(tiny_llama, tmp_path / "clf")
        config = ClassifierTeacherConfig(model=str(tmp_path / "clf"), kind="hf", batch_size=2, device="cpu")
    else:
        config = TransformersTeacherConfig(model=str(tiny_llama), batch_size=2, device="cpu")
    teacher = build_teacher(config)
    threads = []
    generate_batch = teacher._generate_batch

    def recording(requests):
        threads.append(threading.get_ident())
        return generate_batch(requests)

    teacher._generate_batch = recording
    requests = [TeacherRequest.chat(text, max_tokens=4) for text in ["great product", "late again", "it is fine"]]
    generations = run(teacher, requests)
    assert len(generations) == 3 and all(g.ok for g in generations)
    assert threads and set(threads) == {threading.get_ident()}  # every batch, on this thread
