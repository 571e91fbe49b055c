"""What a trainer sees reading a version's Parquet files alone, without the manifest."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq

from curation.store import DatasetStore
from factory.schema import LABELS_METADATA_KEY

LABELS = ["card_lost", "refund_request", "delivery_late"]


def test_parquet_files_name_the_label_set_and_the_order_of_label_probs(tmp_path):
    frame = pl.DataFrame(
        {
            "id": ["a", "b"],
            "instruction": ["Classify the ticket."] * 2,
            "input": ["my card is gone", "where is my parcel"],
            "origin": ["seed", "seed"],
            "label": ["card_lost", "delivery_late"],
            "label_probs": [[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]],
            "drop_stage": [None, "entropy"],
            "drop_reason": [None, "high_entropy"],
        }
    )
    version = DatasetStore(tmp_path).publish("tickets", frame, label_set=LABELS)
    for path in (version.data_path, version.rejected_path):
        labels = json.loads(pq.read_schema(path).metadata[LABELS_METADATA_KEY])
        assert labels == {"label_set": LABELS, "label_probs_order": LABELS}
    kept = pq.read_table(version.data_path).to_pylist()[0]
    order = json.loads(pq.read_schema(version.data_path).metadata[LABELS_METADATA_KEY])["label_probs_order"]
    probs = dict(zip(order, kept["label_probs"]))
    assert max(probs, key=probs.get) == kept["label"]


def test_versions_without_labels_carry_no_label_metadata(tmp_path):
    frame = pl.DataFrame({"id": ["a"], "instruction": ["Say hi."], "input": [""], "origin": ["seed"]})
    version = DatasetStore(tmp_path).publish("greetings", frame)
    assert LABELS_METADATA_KEY not in (pq.read_schema(version.data_path).metadata or {})


def test_datasets_load_dataset_sees_label_id_as_a_class_label(tmp_path):
    import datasets

    frame = pl.DataFrame(
        {
            "id": ["a", "b", "c"],
            "instruction": ["Classify the ticket."] * 3,
            "input": ["my card is gone", "where is my parcel", "refund me"],
            "origin": ["seed"] * 3,
            "label": ["delivery_late", "card_lost", None],
            "label_probs": [[0.1, 0.2, 0.7], [0.8, 0.1, 0.1], None],
        }
    )
    version = DatasetStore(tmp_path).publish("tickets", frame, label_set=LABELS)
    loaded = datasets.load_dataset(
        "parquet", data_files=str(version.data_path), split="train", cache_dir=str(tmp_path / "hf")
    )
    feature = loaded.features["label_id"]
    assert isinstance(feature, datasets.ClassLabel) and feature.names == LABELS
    assert loaded["label_id"] == [2, 0, None]
    assert [feature.int2str(i) for i in loaded["label_id"][:2]] == loaded["label"][:2]
    # relabelled and published again: label_id follows the new label
    again = version.read().with_columns(label=pl.Series(["refund_request", "card_lost", "card_lost"]))
    republished = DatasetStore(tmp_path).publish("tickets", again, label_set=LABELS)
    assert republished.read()["label_id"].to_list() == [1, 0, 0]
