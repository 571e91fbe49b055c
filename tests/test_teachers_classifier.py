"""Classifier teachers: an encoder + linear head trained here, and an HF sequence classifier."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures.teacher_calls import generate_and_close as run
from fixtures.tiny_lm import build_tiny_sequence_classifier

from factory.teachers import ClassifierTeacherConfig, ModelNotFoundError, TeacherRequest, build_teacher
from factory.teachers.classifier import load_encoder, train_encoder_head

TEXTS = {
    "card": ["my card was declined", "I lost my credit card", "the card does not work at the shop", "new card please"],
    "transfer": ["my transfer has not arrived", "send money to my sister", "the transfer is pending", "wire failed"],
    "pin": ["I forgot my pin", "reset my pin code", "pin blocked after three tries", "change the card pin"],
}
TASK = "Classify the intent of this support ticket."


@pytest.fixture(scope="module")
def head_dir(tmp_path_factory):
    texts = [text for label in TEXTS for text in TEXTS[label]]
    labels = [label for label in TEXTS for _ in TEXTS[label]]
    return train_encoder_head(texts, labels, tmp_path_factory.mktemp("head"), epochs=60, seed=0)


@pytest.mark.slow
def test_encoder_head_probs_match_a_direct_forward_pass(head_dir, tmp_path):
    from safetensors.torch import load_file

    assert json.loads((head_dir / "labels.json").read_text()) == ["card", "pin", "transfer"]
    temperature = 2.0
    cfg = ClassifierTeacherConfig(model=str(head_dir), kind="encoder_head", temperature=temperature, device="cpu")
    queries = ["my card got declined at the till", "I can't remember my PIN", "where is the money I sent?"]
    requests = [TeacherRequest.chat(q, system=TASK) for q in queries]
    teacher = build_teacher(cfg, cache_dir=tmp_path)
    generations = run(teacher, requests)
    assert generations[0].teacher.labels == ("card", "pin", "transfer")
    probs = torch.tensor([g.class_probs for g in generations])
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(queries)), atol=1e-5)

    # The same numbers by hand: encoder -> normalised embedding -> head -> softmax(/T).
    meta = json.loads((head_dir / "encoder_head.json").read_text())
    encoder = load_encoder(meta["encoder"])
    head = load_file(str(head_dir / "head.safetensors"))
    embeddings = encoder.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
    direct = torch.softmax((embeddings @ head["weight"].T + head["bias"]) / temperature, dim=-1)
    assert torch.allclose(probs, direct, atol=1e-5)
    assert [g.samples[0].text for g in generations] == ["card", "pin", "transfer"]  # it learned the task

    # A second run is served from the cache; another temperature is not.
    again = build_teacher(cfg, cache_dir=tmp_path)
    assert all(g.cached for g in run(again, requests)) and again.stats.requests_sent == 0
    sharper = build_teacher(cfg.model_copy(update={"temperature": 0.5}), cache_dir=tmp_path)
    sharp = run(sharper, requests)
    assert not any(g.cached for g in sharp)
    assert max(sharp[0].class_probs) > max(generations[0].class_probs)


def test_hf_sequence_classifier(tiny_llama, tmp_path):
    model_dir = tmp_path / "clf"
    model, tokenizer = build_tiny_sequence_classifier(tiny_llama, model_dir)

    cfg = ClassifierTeacherConfig(model=str(model_dir), kind="hf", temperature=1.5, batch_size=2, device="cpu")
    texts = ["great product", "the parcel is late again and nobody answers", "it is fine"]
    generations = run(build_teacher(cfg), [TeacherRequest.chat(t, system=TASK) for t in texts])
    assert generations[0].teacher.labels == ("negative", "neutral", "positive")
    probs = torch.tensor([g.class_probs for g in generations])
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    with torch.no_grad():  # one text at a time, no padding: the batched path must agree
        direct = torch.cat([model(**tokenizer(t, return_tensors="pt")).logits for t in texts])
    assert torch.allclose(probs, torch.softmax(direct / 1.5, dim=-1), atol=1e-4)


def test_missing_classifier_directory_is_one_clear_error(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelNotFoundError, match=f"{missing} does not exist"):
        build_teacher(ClassifierTeacherConfig(model=str(missing), kind="encoder_head"))
    (tmp_path / "half").mkdir()
    with pytest.raises(ModelNotFoundError, match="has no head.safetensors"):
        build_teacher(ClassifierTeacherConfig(model=str(tmp_path / "half"), kind="encoder_head"))


@pytest.mark.slow
def test_full_finetune_saves_its_own_encoder_and_the_backend_uses_it(tmp_path):
    from safetensors.torch import load_file

    texts = [text for label in TEXTS for text in TEXTS[label]]
    labels = [label for label in TEXTS for _ in TEXTS[label]]
    out = train_encoder_head(texts, labels, tmp_path / "full", epochs=30, finetune="full", encoder_epochs=2)
    meta = json.loads((out / "encoder_head.json").read_text())
    assert meta["finetune"] == "full" and meta["encoder"] == "encoder" and len(meta["encoder_epochs"]) == 3
    assert (out / "encoder").is_dir()

    moved = tmp_path / "moved"
    out.rename(moved)  # the encoder is referenced inside the directory: the teacher moves whole
    queries = ["my card got declined at the till", "I can't remember my PIN", "where is the money I sent?"]
    generations = run(build_teacher(ClassifierTeacherConfig(model=str(moved), kind="encoder_head", device="cpu")),
                      [TeacherRequest.chat(q, system=TASK) for q in queries])  # fmt: skip
    encoder = load_encoder(moved / "encoder")
    head = load_file(str(moved / "head.safetensors"))
    direct = torch.softmax(encoder.encode(queries, convert_to_tensor=True, normalize_embeddings=True)
                           @ head["weight"].T + head["bias"], dim=-1)  # fmt: skip
    assert torch.allclose(torch.tensor([g.class_probs for g in generations]), direct, atol=1e-5)
    from factory.teachers.classifier import default_encoder_path

    original = load_encoder(default_encoder_path())
    changed = [
        not torch.equal(a, b) for a, b in zip(encoder[0].auto_model.parameters(), original[0].auto_model.parameters())
    ]
    assert any(changed)  # end to end: the encoder's own weights moved


def test_finetune_auto_picks_full_only_with_enough_examples():
    from factory.teachers.classifier import FULL_FINETUNE_MIN_EXAMPLES, resolve_finetune

    assert resolve_finetune("auto", FULL_FINETUNE_MIN_EXAMPLES - 1) == "head"
    assert resolve_finetune("auto", FULL_FINETUNE_MIN_EXAMPLES) == "full"
    assert resolve_finetune("head", 10**6) == "head" and resolve_finetune("full", 10) == "full"


def test_a_head_teacher_with_too_few_rows_to_hold_out_is_calibrated_on_cross_fitted_logits(tmp_path):
    """36 examples, none held out: the temperature comes from logits of heads that never saw the row. With
    labels that follow the text it stays near 1; with shuffled labels the out-of-fold logits are confidently
    wrong and it grows, which the head's own (training) logits could never show."""
    import random

    openers = ("hi,", "hello", "please help:")
    texts = [f"{opener} {text}" for opener in openers for label in TEXTS for text in TEXTS[label]]
    labels = [label for _ in range(3) for label in TEXTS for _ in TEXTS[label]]
    honest = train_encoder_head(texts, labels, tmp_path / "honest", epochs=60, seed=0, finetune="head")
    shuffled = labels[:]
    random.Random(0).shuffle(shuffled)
    noisy = train_encoder_head(texts, shuffled, tmp_path / "noisy", epochs=60, seed=0, finetune="head")
    honest_meta = json.loads((honest / "encoder_head.json").read_text())
    noisy_meta = json.loads((noisy / "encoder_head.json").read_text())
    assert honest_meta["held_out"] == 0 and honest_meta["calibrated_on"] == "5-fold cross-fitting"
    assert noisy_meta["calibration_temperature"] > 2 * honest_meta["calibration_temperature"]
