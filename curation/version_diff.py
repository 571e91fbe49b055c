"""Compare two dataset versions: rows added, removed and changed (by id), funnel deltas."""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from curation.store import DatasetVersion, StoreError

# What makes a row "changed": the content a trainer consumes and the review verdict.
CONTENT_COLUMNS = ("instruction", "input", "response", "label", "label_probs", "review")


@dataclass
class VersionDiff:
    old: str
    new: str
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    newly_rejected: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)
    funnel_deltas: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return self.__dict__.copy()


def _row_hashes(frame: pl.DataFrame) -> pl.DataFrame:
    columns = [c for c in CONTENT_COLUMNS if c in frame.columns]
    # JSON-encode the content so nested columns (lists, structs) hash by value.
    encoded = frame.select(pl.col("id"), pl.struct(columns).struct.json_encode().alias("content"))
    return encoded.select("id", pl.col("content").hash().alias("content_hash"))


def _funnel_counts(version: DatasetVersion) -> dict[tuple[str, str], int]:
    return {
        (step["stage"], reason): count
        for step in version.manifest["funnel"]
        for reason, count in step["dropped"].items()
    }


def diff_versions(old: DatasetVersion, new: DatasetVersion) -> VersionDiff:
    """Kept rows of `new` against kept rows of `old`, plus moves to and from rejected."""
    if old.name != new.name:
        # Ids are content hashes, so two datasets would "differ" in every row: meaningless.
        raise StoreError(f"cannot diff {old.ref} with {new.ref}: versions of two different datasets")
    columns = ["id", *CONTENT_COLUMNS]
    old_kept, new_kept = _row_hashes(old.read(columns)), _row_hashes(new.read(columns))
    old_rejected = set(old.read_rejected(["id"])["id"].to_list())
    new_rejected = set(new.read_rejected(["id"])["id"].to_list())
    old_ids, new_ids = set(old_kept["id"].to_list()), set(new_kept["id"].to_list())

    both = old_kept.join(new_kept, on="id", suffix="_new")
    changed = both.filter(pl.col("content_hash") != pl.col("content_hash_new"))["id"].sort().to_list()

    old_funnel, new_funnel = _funnel_counts(old), _funnel_counts(new)
    deltas = [
        {"stage": stage, "reason": reason, "old": old_funnel.get(key, 0), "new": new_funnel.get(key, 0)}
        for key in sorted(set(old_funnel) | set(new_funnel))
        for stage, reason in [key]
        if old_funnel.get(key, 0) != new_funnel.get(key, 0)
    ]
    return VersionDiff(
        old=old.ref,
        new=new.ref,
        added=sorted(new_ids - old_ids),
        removed=sorted(old_ids - new_ids),
        changed=changed,
        newly_rejected=sorted((old_ids - new_ids) & new_rejected),
        restored=sorted((new_ids - old_ids) & old_rejected),
        funnel_deltas=deltas,
    )
