"""Classifier KD end to end on a tiny published version: train, resume, save/load, ONNX, evaluate, CLI."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from curation.store import DatasetStore
from factory.errors import StillhouseError
from factory.schema import record_id
from trainer.bag_model import BagClassifier
from trainer.config import HashedBagStudent, TrainConfig
from trainer.evaluation import calibration_bins, evaluate, expected_calibration_error
from trainer.training import PROVENANCE_FILE, train

LABELS = ["card_lost", "transfer_late", "pin_reset"]
PHRASES = {
    "card_lost": ["i lost my card", "my card was stolen", "cannot find my debit card", "card missing since monday"],
    "transfer_late": ["my transfer has not arrived", "payment still pending", "money sent yesterday is not there"],
    "pin_reset": ["i forgot my pin", "how do i reset the pin", "pin is blocked after three tries"],
}
OPENERS = ["hello,", "hi team,", "urgent:", "", "please help,", "good morning,"]
CLOSERS = ["", "thanks", "what should i do?", "can you check?", "asap please"]
INSTRUCTION = "Classify the intent of this support ticket."


def tickets(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.choice(LABELS)
        text = " ".join(part for part in (rng.choice(OPENERS), rng.choice(PHRASES[label]), rng.choice(CLOSERS)) if part)
        rows.append((text, label))
    return rows


def publish_tickets(root: Path, n: int = 150, with_probs: bool = True) -> str:
    rows = list(dict.fromkeys(tickets(n, seed=1)))  # unique texts: ids are content hashes
    probs = []
    for _, label in rows:
        p = np.full(len(LABELS), 0.1)
        p[LABELS.index(label)] = 0.8
        probs.append(p.astype(np.float32).tolist())
    frame = pl.DataFrame(
        {
            "id": [record_id(INSTRUCTION, text, "import") for text, _ in rows],
            "instruction": [INSTRUCTION] * len(rows),
            "input": [text for text, _ in rows],
            "origin": ["import"] * len(rows),
            "label": [label for _, label in rows],
            "label_probs": probs if with_probs else [None] * len(rows),
        }
    )
    version = DatasetStore(root).publish("tickets", frame, label_set=LABELS)
    return version.ref


def small_config(root: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(
        dataset="tickets@latest",
        store_root=root,
        objective="classifier_kd",
        student=HashedBagStudent(buckets=4096, dim=16, val_fraction=0.2),
        output_dir=out,
        epochs=6,
        batch_size=16,
        temperature=2.0,
        alpha=0.7,
        seed=3,
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture
def test_file(tmp_path) -> Path:
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in tickets(60, seed=99)) + "\n")
    return path


def test_classifier_kd_end_to_end(tmp_path, test_file):
    root = tmp_path / "store"
    ref = publish_tickets(root)
    result = train(small_config(root, tmp_path / "run"))

    provenance = json.loads((result.model_dir / PROVENANCE_FILE).read_text())
    version = DatasetStore(root).resolve(ref)
    assert provenance["dataset"] == ref == result.dataset_ref
    assert provenance["manifest_sha256"] == version.manifest_sha256
    assert provenance["labels"] == LABELS and provenance["calibration_temperature"] > 0
    assert result.losses[-1] < result.losses[0]

    report = evaluate(result.model_dir, test_file, out_dir=tmp_path / "eval", latency_examples=20)
    assert report["student"]["macro_f1"] > 0.9
    assert 0 <= report["student"]["ece"] <= 1
    for name in ("evaluation.json", "evaluation.md", "reliability.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["dataset"] == ref
    assert "macro-F1" in (tmp_path / "eval" / "evaluation.md").read_text()


def test_save_load_and_onnx_parity(tmp_path):
    root = tmp_path / "store"
    publish_tickets(root)
    result = train(small_config(root, tmp_path / "run", epochs=2))
    model = BagClassifier.from_pretrained(result.model_dir)
    texts = ["hi, i forgot my pin", "transfer", "some words never seen before in training at all", "card stolen!!"]
    fresh = BagClassifier.from_pretrained(result.model_dir)
    np.testing.assert_array_equal(model.predict_proba(texts), fresh.predict_proba(texts))

    import onnxruntime

    path = model.export_onnx(tmp_path / "student.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = model.featurizer.batch(texts).numpy()  # another batch size and width than the export example
    (onnx_probs,) = session.run(["probs"], {"ids": ids})
    np.testing.assert_allclose(onnx_probs, model.predict_proba(texts), atol=1e-5)
    assert (result.model_dir / "model.onnx").is_file()  # train exports (and parity-checks) too


def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path):
    root = tmp_path / "store"
    publish_tickets(root)
    whole = train(small_config(root, tmp_path / "whole", epochs=3, checkpoint_every=5))
    checkpoints = sorted((tmp_path / "whole" / "checkpoints").glob("step-*"))
    assert len(checkpoints) == 1  # only the last is kept
    interrupted_at = int(checkpoints[0].name.split("-")[1])
    assert 0 < interrupted_at < whole.steps

    # a second run directory that holds only what an interrupted run would have left
    shutil.copytree(checkpoints[0], tmp_path / "resumed" / "checkpoints" / checkpoints[0].name)
    resumed = train(small_config(root, tmp_path / "resumed", epochs=3, checkpoint_every=5))
    assert resumed.resumed_from == interrupted_at and resumed.steps == whole.steps
    assert resumed.losses == pytest.approx(whole.losses[interrupted_at:], abs=0)
    a = BagClassifier.from_pretrained(whole.model_dir).net.state_dict()
    b = BagClassifier.from_pretrained(resumed.model_dir).net.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a checkpoint is only resumed by the config that wrote it
    with pytest.raises(StillhouseError, match="different training config"):
        train(small_config(root, tmp_path / "resumed", epochs=3, checkpoint_every=5, alpha=0.2))


def test_hard_label_objective_needs_no_probs_but_kd_does(tmp_path):
    root = tmp_path / "store"
    publish_tickets(root, with_probs=False)
    with pytest.raises(StillhouseError, match="label_probs.*alpha: 0"):
        train(small_config(root, tmp_path / "kd"))
    result = train(small_config(root, tmp_path / "hard", alpha=0.0, epochs=1))
    assert result.steps > 0


def test_unknown_label_is_refused_naming_the_row(tmp_path):
    root = tmp_path / "store"
    frame = pl.DataFrame(
        {
            "id": ["a", "b"],
            "instruction": [INSTRUCTION] * 2,
            "input": ["x", "y"],
            "origin": ["import"] * 2,
            "label": ["card_lost", "weather"],
        }
    )
    # Refused when published: a version its readers (the trainer first) would refuse is never written.
    with pytest.raises(StillhouseError, match="row 1 has label 'weather', which is not in the label_set"):
        DatasetStore(root).publish("tickets", frame, label_set=LABELS)
    assert not root.exists() or not DatasetStore(root).names()


def test_ece_matches_hand_computed_example():
    # bins of width 1/15; 0.95 and 0.97 share the top bin, 0.55 and 0.6 share bin 9, 0.2 is alone in bin 3
    confidence = np.array([0.95, 0.97, 0.55, 0.6, 0.2])
    correct = np.array([1, 0, 1, 1, 0])
    expected = (2 / 5) * abs(0.5 - 0.96) + (2 / 5) * abs(1.0 - 0.575) + (1 / 5) * abs(0.0 - 0.2)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected)
    bins = calibration_bins(confidence, correct)
    assert bins.height == 15 and bins["count"].sum() == 5
    assert bins["count"][14] == 2 and bins["count"][8] == 2 and bins["count"][2] == 1
    # confidence exactly on an edge falls in the lower bin: (lo, hi]
    assert calibration_bins(np.array([1 / 15]), np.array([1]))["count"][0] == 1
    assert expected_calibration_error(np.array([1.0, 1.0]), np.array([1, 1])) == 0.0


def write_config(path: Path, root: Path, out: Path, dataset: str = "tickets@latest") -> Path:
    path.write_text(
        f"dataset: {dataset}\nstore_root: {root}\nobjective: classifier_kd\noutput_dir: {out}\nepochs: 2\n"
        "batch_size: 16\nalpha: 0.5\nstudent:\n  type: hashed_bag\n  buckets: 2048\n  dim: 8\n"
    )
    return path


def test_cli_train_and_eval(tmp_path, run_cli, test_file):
    root = tmp_path / "store"
    publish_tickets(root)
    config = write_config(tmp_path / "train.yaml", root, tmp_path / "run")
    code, out, err = run_cli("train", config)
    assert code == 0, err
    assert "trained on tickets@v1" in out
    model_dir = tmp_path / "run" / "model"
    code, out, err = run_cli("eval", model_dir, "--test", test_file, "--latency-examples", "5")
    assert code == 0, err
    assert "student: macro-F1" in out and "(floor " in out
    assert (model_dir / "evaluation" / "evaluation.md").is_file()


def test_cli_errors_are_one_line(tmp_path, run_cli, test_file):
    root = tmp_path / "store"
    publish_tickets(root)
    config = write_config(tmp_path / "train.yaml", root, tmp_path / "run", dataset="nosuch@v1")
    code, _, err = run_cli("train", config)
    assert code == 1 and "unknown dataset 'nosuch'" in err and "Traceback" not in err

    (tmp_path / "bad.yaml").write_text("dataset: tickets@v1\noutput_dir: x\nlearning_rate: 3\n")
    code, _, err = run_cli("train", tmp_path / "bad.yaml")
    assert code == 1 and "bad.yaml:3" in err and "learning_rate" in err

    code, _, err = run_cli("eval", tmp_path / "nomodel", "--test", test_file)
    assert code == 1 and "nomodel" in err


def test_calibration_rows_hold_out_whole_lineages_and_skip_derived_rows():
    from trainer.classifier import calibration_split

    originals = [f"r{i}" for i in range(30)]
    frame = pl.DataFrame(
        {
            "id": originals + [f"{p}-copy{j}" for p in originals for j in range(2)],
            "parent_id": [None] * 30 + [p for p in originals for _ in range(2)],
        }
    )
    calibration, training = calibration_split(frame, fraction=0.2, seed=0)
    assert len(calibration) == 6  # 20% of 30 lineages, originals only
    assert all(frame["parent_id"][i] is None for i in calibration)
    held = {frame["id"][i] for i in calibration}
    assert not any(frame["parent_id"][i] in held or frame["id"][i] in held for i in training)
    assert len(training) == 24 * 3


def test_macro_f1_counts_classes_predicted_but_absent_from_the_test_set():
    from sklearn.metrics import f1_score

    from trainer.evaluation import macro_f1

    true = ["a", "a", "b", "b", "b", "d"]
    predicted = ["a", "c", "b", "b", "c", "d"]  # "c" is never a true label
    # by hand: a P=1 R=1/2 F=2/3; b P=1 R=2/3 F=4/5; c P=0 F=0; d F=1
    by_hand = (2 / 3 + 4 / 5 + 0 + 1) / 4
    assert macro_f1(true, predicted) == pytest.approx(by_hand)
    assert macro_f1(true, predicted) == pytest.approx(f1_score(true, predicted, average="macro"))
    # over the test set's labels only, "c" would be ignored and the score flattered
    assert macro_f1(true, predicted) < f1_score(true, predicted, labels=["a", "b", "d"], average="macro")


def test_each_bootstrap_draw_is_scored_as_sklearn_scores_it():
    from sklearn.metrics import f1_score

    from trainer.evaluation import resampled_macro_f1

    rng = np.random.default_rng(0)
    true = rng.integers(0, 5, 60)
    predicted = np.where(rng.random(60) < 0.7, true, rng.integers(0, 6, 60))  # label 5 is never a true label
    counts = rng.multinomial(60, np.full(60, 1 / 60), size=40)
    scored = resampled_macro_f1(true, predicted, counts, n_labels=6)
    for draw, value in zip(counts, scored):
        rows = np.repeat(np.arange(60), draw)
        assert value == pytest.approx(f1_score(true[rows], predicted[rows], average="macro", zero_division=0))


def test_bootstrap_interval_of_the_f1_ratio_is_paired_and_narrows_with_more_rows():
    from trainer.evaluation import bootstrap_f1_ratio, macro_f1

    rng = np.random.default_rng(1)
    labels = [f"intent_{i}" for i in range(8)]

    def task(n: int) -> tuple[list[str], list[str], list[str]]:
        true = [labels[i] for i in rng.integers(0, 8, n)]
        student = [x if rng.random() > 0.2 else labels[rng.integers(0, 8)] for x in true]
        teacher = [x if rng.random() > 0.1 else labels[rng.integers(0, 8)] for x in true]
        return true, student, teacher

    true, student, teacher = task(300)
    low, high = bootstrap_f1_ratio(true, student, teacher)
    assert low < macro_f1(true, student) / macro_f1(true, teacher) < high < 1.0 + 0.1
    assert bootstrap_f1_ratio(true, teacher, teacher) == (1.0, 1.0)  # the same predictions on every draw
    assert bootstrap_f1_ratio(true, student, ["wrong"] * len(true)) is None  # a teacher always wrong: no ratio
    big_low, big_high = bootstrap_f1_ratio(*task(3000))
    assert big_high - big_low < (high - low) / 2  # ten times the rows: about a third of the width


def test_ece_is_reported_raw_and_at_the_calibration_temperature(tmp_path, test_file):
    from trainer.evaluation import read_test_file, score, softmax

    root = tmp_path / "store"
    publish_tickets(root)
    result = train(small_config(root, tmp_path / "run"))
    model = BagClassifier.from_pretrained(result.model_dir)
    model.temperature = 3.0  # a deliberately soft calibration, so raw and calibrated differ
    test = read_test_file(test_file)
    scores = score(model, test)
    logits = model.logits(test.texts)
    correct = np.array([model.labels[i] == t for i, t in zip(logits.argmax(1), test.labels)])
    assert scores["ece_raw"] == pytest.approx(expected_calibration_error(softmax(logits).max(1), correct))
    assert scores["ece"] == pytest.approx(expected_calibration_error(softmax(logits, 3.0).max(1), correct))
    assert scores["ece"] != pytest.approx(scores["ece_raw"]) and scores["temperature"] == 3.0

    report = evaluate(result.model_dir, test_file, out_dir=tmp_path / "eval", latency_examples=5)
    assert {"ece", "ece_raw", "ece_floor", "calibration_temperature"} <= set(report["student"])
    assert 0 < report["student"]["ece_floor"] < 1
    markdown = (tmp_path / "eval" / "evaluation.md").read_text()
    assert "ECE raw" in markdown and "ECE floor" in markdown


def test_ece_sampling_floor_is_what_a_perfectly_calibrated_model_reads():
    from math import comb

    from trainer.evaluation import ece_sampling_floor

    assert ece_sampling_floor(np.ones(50)) == 0.0  # sure and always right: no noise
    # 100 rows at 0.5 share one bin: the floor is E|k/100 - 0.5| for k ~ Binomial(100, 0.5)
    exact = sum(comb(100, k) * abs(k / 100 - 0.5) for k in range(101)) / 2**100
    assert ece_sampling_floor(np.full(100, 0.5), draws=4000) == pytest.approx(exact, abs=0.002)
    # four times the rows, half the noise
    assert ece_sampling_floor(np.full(400, 0.5), draws=4000) == pytest.approx(exact / 2, abs=0.002)
    # and it is the mean ECE of outcomes drawn at the stated confidences
    confidence = np.random.default_rng(1).uniform(0.5, 1.0, 300)
    draws = np.random.default_rng(2).random((500, 300)) < confidence
    observed = np.mean([expected_calibration_error(confidence, correct) for correct in draws])
    assert ece_sampling_floor(confidence) == pytest.approx(observed, rel=0.05)


@pytest.mark.slow
def test_static_embedding_student_from_the_encoder(tmp_path, test_file):
    from trainer.config import StaticEmbeddingStudent

    root = tmp_path / "store"
    publish_tickets(root)
    config = small_config(root, tmp_path / "run", student=StaticEmbeddingStudent(dim=32, val_fraction=0.2), epochs=10)
    result = train(config)
    assert result.details["student_type"] == "static_embedding" and result.details["distilled_from"]
    assert (result.model_dir / "tokenizer").is_dir() and (result.model_dir / "model.onnx").is_file()
    report = evaluate(result.model_dir, test_file, out_dir=tmp_path / "eval", latency_examples=5)
    assert report["student"]["macro_f1"] > 0.9

    model = BagClassifier.from_pretrained(result.model_dir)
    texts = ["hello, my debit card is gone", "pin?", "words the training set never had: zebra quantum"]
    np.testing.assert_allclose(
        model.predict_proba(texts), BagClassifier.from_pretrained(result.model_dir).predict_proba(texts)
    )
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result.model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(["probs"], {"ids": model.featurizer.batch(texts).numpy()})
    np.testing.assert_allclose(onnx_probs, model.predict_proba(texts), atol=1e-5)


@pytest.mark.slow
def test_static_student_matches_an_encoder_head_teacher_and_reuses_its_head(tmp_path, test_file):
    from factory.teachers.classifier import train_encoder_head
    from trainer.classifier import build_student
    from trainer.config import StaticEmbeddingStudent
    from trainer.static_student import TeacherSpace

    labelled = tickets(60, seed=7)
    teacher_labels = sorted(LABELS)  # another order than the dataset's label set
    assert teacher_labels != LABELS
    teacher = train_encoder_head(
        [t for t, _ in labelled], [lab for _, lab in labelled], tmp_path / "teacher", epochs=60, seed=0,
        label_set=teacher_labels,
    )  # fmt: skip
    root = tmp_path / "store"
    publish_tickets(root)
    version = DatasetStore(root).resolve("tickets@latest")

    student = StaticEmbeddingStudent(
        encoder=teacher, dim=32, val_fraction=0.2, match_epochs=5, context_heads=4, context_width=16
    )
    model, _, space = build_student(student, LABELS, version)
    assert space is not None and space.dim == 384 and model.net.projection.out_features == 384
    head = TeacherSpace.of(str(teacher))
    for row, label in enumerate(LABELS):  # the teacher's head, its rows in the dataset's label order
        torch.testing.assert_close(model.net.output.weight[row], head.weight[teacher_labels.index(label)])
    off, _, no_space = build_student(student.model_copy(update={"match_teacher": "off"}), LABELS, version)
    assert no_space is None and off.net.projection is None

    # the teacher's own examples are matched too: a blank one, a repeat and one the dataset has are left out
    dataset_texts = version.read(columns=["input"])["input"].to_list()
    extra = [{"text": t} for t, _ in labelled] + [{"text": " "}, {"text": labelled[0][0]}, {"text": dataset_texts[0]}]
    match_data = tmp_path / "teacher_examples.jsonl"
    match_data.write_text("\n".join(json.dumps(row) for row in extra) + "\n")
    distinct = len({t for t, _ in labelled} - set(dataset_texts))
    assert distinct > 10
    student = student.model_copy(update={"match_data": match_data})
    result = train(small_config(root, tmp_path / "run", student=student, epochs=3))
    matched = result.details["matched_teacher"]
    assert matched["teacher_dim"] == 384 and 1 <= matched["epochs"] <= 5 and matched["held_out_cosine"] > 0.5
    assert matched["match_data_texts"] == distinct
    # a small dataset is matched on perturbed copies too, as many per text as the cap allows
    assert matched["copies"] > 10 * (result.details["rows"]["train"] + distinct)
    saved = json.loads((result.model_dir / "config.json").read_text())
    assert saved["space_dim"] == 384 and saved["hidden"] == student.hidden > 0 and saved["pooling"] == "attention"
    report = evaluate(result.model_dir, test_file, teacher, out_dir=tmp_path / "eval", latency_examples=5)
    assert report["student"]["macro_f1"] > 0.9
    low, high = report["ratios"]["f1_interval_95"]
    assert low <= report["ratios"]["f1"] <= high
    assert f"({low:.3f} to {high:.3f})" in (tmp_path / "eval" / "evaluation.md").read_text()
    reloaded = BagClassifier.from_pretrained(result.model_dir)
    texts = ["hello, my debit card is gone", "pin?"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(result.model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(["probs"], {"ids": reloaded.featurizer.batch(texts).numpy()})
    np.testing.assert_allclose(onnx_probs, reloaded.predict_proba(texts), atol=1e-5)
    # the residual MLP was trained (it starts at zero) and came back with the model
    assert reloaded.net.residual is not None and float(reloaded.net.residual[2].weight.detach().abs().max()) > 0
    # so was the pooling query (it starts at zero, the plain mean)
    assert reloaded.net.query is not None and float(reloaded.net.query.detach().abs().max()) > 0
    # and the context layer (its output starts at zero), saved with its heads
    assert saved["context_heads"] == student.context_heads == reloaded.net.context_heads > 0
    assert saved["context_width"] == reloaded.net.context_width == 16 == reloaded.net.context.qkv.out_features / 3
    assert float(reloaded.net.context.out.weight.detach().abs().max()) > 0
    # the teacher's token vectors line up with the student's ids, one per token, [CLS] and [SEP] left out
    texts = ["hello, my debit card is gone", "pin?", "i lost my card and i cannot find it anywhere at all"]
    sentences, tokens = head.embeddings_and_tokens(texts)
    assert tokens.lengths.tolist() == [len(ids) for ids in reloaded.featurizer.ids_list(texts)]
    torch.testing.assert_close(sentences, head.embeddings(texts), atol=1e-4, rtol=0)


def test_match_data_without_its_text_column_names_the_file_and_the_columns(tmp_path):
    from trainer.classifier import match_data_texts
    from trainer.config import StaticEmbeddingStudent

    path = tmp_path / "examples.csv"
    path.write_text("utterance,label\nmy card is gone,card\n")
    with pytest.raises(
        StillhouseError, match=r"student.match_data .*examples.csv: no 'text' column \(columns: utterance, label\)"
    ):
        match_data_texts(StaticEmbeddingStudent(match_data=path), exclude=set())
    with pytest.raises(ValueError, match=r"match_data\n.*missing.jsonl is not a file"):
        StaticEmbeddingStudent(match_data=tmp_path / "missing.jsonl")
    student = StaticEmbeddingStudent(match_data=path, match_text_column="utterance")
    assert match_data_texts(student, exclude=set()) == ["my card is gone"]
    assert match_data_texts(student, exclude={"my card is gone"}) == []


def test_a_recorded_teacher_missing_from_here_is_named_not_silently_skipped(tmp_path, monkeypatch, capsys):
    import trainer.classifier as classifier
    from trainer.config import StaticEmbeddingStudent

    root = tmp_path / "store"
    publish_tickets(root)
    version = DatasetStore(root).resolve("tickets@latest")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(classifier, "recorded_teacher", lambda _version: "runs/quickstart/teacher")
    model, encoder, space = classifier.build_student(StaticEmbeddingStudent(dim=32), LABELS, version)
    assert space is None and model.net.projection is None
    line = capsys.readouterr().err
    assert "runs/quickstart/teacher, which is not found from" in line and "student.encoder" in line


def test_matching_starts_from_a_map_that_generalises_when_rows_barely_outnumber_unknowns():
    """20 training rows for 17 unknowns per target dimension, targets not exactly linear in the mean (as
    a teacher's are not): plain least squares all but interpolates them, the ridge start generalises."""
    from trainer.bag_model import BagNet
    from trainer.classifier import match_teacher_space

    generator = torch.Generator().manual_seed(0)
    vocab, dim, space = 200, 16, 8
    net = BagNet(vocab, dim, n_labels=3, space_dim=space)
    with torch.no_grad():
        net.embedding.weight[1:] = torch.randn(vocab - 1, dim, generator=generator)
    ids = torch.randint(1, vocab, (60, 10), generator=generator)
    true_map = torch.randn(dim, space, generator=generator)
    with torch.no_grad():
        noise = 0.5 * torch.randn(60, space, generator=generator)
        targets = torch.nn.functional.normalize(net.pool(ids) @ true_map + noise, dim=-1)
    train_rows, held_rows = list(range(20)), list(range(20, 60))
    start = match_teacher_space(net, lambda rows: ids[rows], targets, train_rows, held_rows, 0, 4, 0)

    with torch.no_grad():  # what the plain least-squares start would have given
        design = torch.cat([net.pool(ids[train_rows]), torch.ones(20, 1)], dim=1)
        solution = torch.linalg.lstsq(design, targets[train_rows]).solution
        plain = torch.nn.functional.normalize(
            torch.cat([net.pool(ids[held_rows]), torch.ones(40, 1)], dim=1) @ solution, dim=-1
        )
        plain_cosine = float((plain * targets[held_rows]).sum(-1).mean())
    assert start["epochs"] == 0
    assert start["held_out_cosine"] > plain_cosine + 0.1


def test_a_matched_student_is_calibrated_to_its_teacher_at_the_teacher_s_own_temperature(tmp_path):
    """The labels were written at T = 1; a teacher whose held-out rows call for T = 4 is less sure than
    those probabilities say, and the student it teaches must be calibrated to that, not to T = 1."""
    from factory.teachers.classifier import train_encoder_head
    from trainer.config import StaticEmbeddingStudent

    labelled = tickets(60, seed=7)
    teacher = train_encoder_head([t for t, _ in labelled], [lab for _, lab in labelled], tmp_path / "t1", epochs=60)
    meta = json.loads((teacher / "encoder_head.json").read_text())
    hot = tmp_path / "t4"
    shutil.copytree(teacher, hot)
    (hot / "encoder_head.json").write_text(json.dumps({**meta, "calibration_temperature": 4.0}))
    (teacher / "encoder_head.json").write_text(json.dumps({**meta, "calibration_temperature": 1.0}))
    root = tmp_path / "store"
    publish_tickets(root)
    temperatures = {}
    for name, directory in (("t1", teacher), ("t4", hot)):
        student = StaticEmbeddingStudent(encoder=directory, dim=32, val_fraction=0.2, match_epochs=5)
        result = train(small_config(root, tmp_path / f"run-{name}", student=student, epochs=3))
        temperatures[name] = result.details["calibration_temperature"]
    assert temperatures["t4"] > 2 * temperatures["t1"]


def test_perturbed_copies_differ_from_their_original_and_point_back_to_it():
    from trainer.augment import perturbed_copies

    texts = ["my card was never delivered to my home", "pin?", "how do I top up my account with cash"]
    copies = perturbed_copies(texts, 5, seed=3)
    assert copies == perturbed_copies(texts, 5, seed=3) and copies != perturbed_copies(texts, 5, seed=4)
    assert {index for _, index in copies} == {0, 2}  # a text under three words has no copies
    assert 5 <= len(copies) <= 10
    for copy, index in copies:  # the original's words, in its order, some left out
        words, original = copy.split(), texts[index].split()
        assert words and copy != texts[index]
        rest = iter(original)
        assert all(word in rest for word in words)  # a subsequence of the original


def test_copies_per_text_fill_the_matching_set_up_to_its_size_and_the_cap():
    from trainer.classifier import MAX_COPIES, copies_per_text
    from trainer.config import StaticEmbeddingStudent

    student = StaticEmbeddingStudent(match_texts=20000)
    assert copies_per_text(student, 1800) == 11  # 1,800 texts and 11 copies each: 21,600
    assert copies_per_text(student, 9000) == 2
    assert copies_per_text(student, 30000) == 0
    assert copies_per_text(student, 100) == MAX_COPIES
    assert copies_per_text(student, 0) == 0
    assert copies_per_text(StaticEmbeddingStudent(match_texts=0), 100) == 0


def test_an_explicit_student_encoder_is_used_or_named_never_replaced_by_the_default(tmp_path, monkeypatch):
    import trainer.classifier as classifier
    from factory.teachers.classifier import default_encoder_path
    from trainer.config import StaticEmbeddingStudent

    root = tmp_path / "store"
    publish_tickets(root)
    version = DatasetStore(root).resolve("tickets@latest")
    with pytest.raises(StillhouseError, match="student.encoder: .*no-such-encoder does not exist"):
        classifier.build_student(StaticEmbeddingStudent(encoder=tmp_path / "no-such-encoder"), LABELS, version)

    # a directory that is not an encoder_head teacher is distilled from as it is (a sentence encoder)
    mine = tmp_path / "my-encoder"
    mine.mkdir()
    assert mine != default_encoder_path()
    asked = []
    monkeypatch.setattr(classifier, "distill_token_embeddings", lambda path, dim: asked.append(path) or (None, None))
    monkeypatch.setattr(classifier.BagClassifier, "from_static_embeddings", lambda *args: "student")
    _, distilled_from, space = classifier.build_student(StaticEmbeddingStudent(encoder=mine), LABELS, version)
    assert asked == [mine] and distilled_from == str(mine) and space is None


def test_a_matched_student_without_copies_tokenizes_no_copies():
    """match_texts: 0 ("the training texts alone") gives an empty list of copies to tokenize."""
    from transformers import AutoTokenizer

    from factory.teachers.classifier import default_encoder_path
    from trainer.static_student import TokenFeaturizer

    featurizer = TokenFeaturizer(AutoTokenizer.from_pretrained(str(default_encoder_path())))
    assert featurizer.ids_list([]) == []
    assert featurizer.ids_list(["pin?"]) == [
        [i + 1 for i in featurizer.tokenizer("pin?", add_special_tokens=False)["input_ids"]]
    ]


def test_attention_pooling_starts_as_the_mean_weighs_tokens_by_their_vectors_and_survives_padding():
    from trainer.bag_model import BagNet

    net = BagNet(5, 2, 3, space_dim=4, pooling="attention")
    with torch.no_grad():
        net.embedding.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 3.0]]))
    plain = BagNet(5, 2, 3, space_dim=4, pooling="mean")
    plain.embedding.weight.data.copy_(net.embedding.weight.data)
    ids = torch.tensor([[1, 2, 0, 0], [3, 4, 2, 0], [0, 0, 0, 0]])  # the last row: padding alone
    torch.testing.assert_close(net.pool(ids), plain.pool(ids))  # a zero query is the plain mean
    with torch.no_grad():
        net.query.copy_(torch.tensor([4.0, 0.0]))  # tokens along the first axis count more
    pooled = net.pool(ids)
    assert pooled[0, 0] > 0.95 and pooled[0, 1] < 0.05
    torch.testing.assert_close(pooled[2], torch.zeros(2))  # not NaN
    assert torch.isfinite(net(ids)).all()


def test_a_context_layer_starts_at_the_static_vectors_reads_word_order_and_ignores_padding():
    from trainer.bag_model import BagNet

    generator = torch.Generator().manual_seed(0)
    net = BagNet(50, 8, 3, space_dim=6, pooling="attention", context_heads=2)
    bag = BagNet(50, 8, 3, space_dim=6, pooling="attention")
    bag.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("context.")})
    ids = torch.tensor([[5, 9, 12, 0], [12, 9, 5, 0]])  # the same words in another order, padded
    with torch.no_grad():  # a zero output projection: the static vectors plus their (small) positions
        start = net.token_vectors(ids)
        torch.testing.assert_close(start, net.embedding(ids) + net.context.positions.weight[:4])
        net.context.out.weight.normal_(generator=generator)
        net.context.qkv.weight.normal_(generator=generator)
        reordered = net.features(ids)
        padded = net.features(torch.tensor([[5, 9, 12, 0, 0, 0, 0]]))
    torch.testing.assert_close(bag.features(ids)[0], bag.features(ids)[1])  # a bag cannot tell the orders apart
    assert float((reordered[0] - reordered[1]).abs().max()) > 1e-3  # the context layer can
    torch.testing.assert_close(padded[0], reordered[0])  # padding is never attended to


def test_a_context_layer_saved_before_its_width_was_a_setting_loads_at_the_full_width(tmp_path):
    from trainer.bag_model import BagNet, Featurizer

    featurizer = Featurizer(buckets=64)
    net = BagNet(64, 8, 3, space_dim=6, pooling="attention", context_heads=2, context_width=8)
    with torch.no_grad():
        net.context.out.weight.normal_()  # not the zero it starts at, so that the layer counts
    model = BagClassifier(featurizer, net, ["a", "b", "c"])
    model.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    del config["context_width"]
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    reloaded = BagClassifier.from_pretrained(tmp_path / "model")
    assert reloaded.net.context_width == 8
    np.testing.assert_array_equal(reloaded.predict_proba(["a b", "c"]), model.predict_proba(["a b", "c"]))


def test_token_matching_counts_the_tokens_both_models_have():
    from trainer.classifier import token_match_loss
    from trainer.static_student import TokenVectors

    generator = torch.Generator().manual_seed(0)
    predicted = torch.randn(2, 5, 4, generator=generator)
    ids = torch.tensor([[3, 4, 5, 6, 7], [3, 4, 0, 0, 0]])
    # the teacher truncated the first row after 4 tokens; the second has 2 tokens and padding; a third text
    # sits between them in the store, so rows are found by where they start
    teacher = TokenVectors.of([predicted[0, :4].half(), torch.ones(3, 4).half(), predicted[1, :2].half()])
    assert teacher.lengths.tolist() == [4, 3, 2] and teacher.starts.tolist() == [0, 4, 7]

    def loss(rows: list[int], positions: torch.Tensor) -> float:
        targets, present = teacher.at(rows, positions)
        return float(token_match_loss(predicted[:, positions], targets, present & (ids[:, positions] > 0)))

    every = torch.arange(5)
    assert loss([0, 2], every) < 1e-3
    targets, present = teacher.at([0, 2], every)
    assert present.tolist() == [[True] * 4 + [False], [True, True, False, False, False]]
    assert float(targets[0, 4].abs().sum()) == 0.0  # zeros past a text's end
    # the second row against the third text's opposite: 1 - cosine = 2 on 2 of the 6 tokens counted
    teacher = TokenVectors.of([predicted[0, :4].half(), torch.ones(3, 4).half(), -predicted[1, :2].half()])
    assert loss([0, 2], every) == pytest.approx(2 * 2 / 6, abs=1e-3)
    # a share of the positions: columns 0, 3 and 4 count where both models have a token (row 0: 0 and 3,
    # the teacher stopped before 4; row 1: 0, the rest is padding), so one of three tokens is opposite
    assert loss([0, 2], torch.tensor([0, 3, 4])) == pytest.approx(2 * 1 / 3, abs=1e-3)


def test_length_batches_cover_every_row_once_with_little_padding():
    from factory.teachers.classifier import length_batches

    lengths = [int(n) for n in torch.randint(1, 80, (1000,), generator=torch.Generator().manual_seed(0))]
    batches = length_batches(lengths, 32, torch.Generator().manual_seed(0))
    assert sorted(row for batch in batches for row in batch) == list(range(1000))
    assert all(len(batch) <= 32 for batch in batches)

    def padded(bs: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in bs)

    plain = [list(range(i, min(i + 32, 1000))) for i in range(0, 1000, 32)]
    assert padded(batches) < 0.7 * padded(plain)
    assert batches == length_batches(lengths, 32, torch.Generator().manual_seed(0))  # reproducible
    assert batches != length_batches(lengths, 32, torch.Generator().manual_seed(1))
