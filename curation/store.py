"""The dataset store: immutable, versioned, hash-verified Parquet datasets.

    <root>/<name>/v<N>/{data.parquet, rejected.parquet, manifest.json, README.md}

A version is written to a temporary directory beside its final place and renamed
into it while holding the name's lock file, so it appears whole or not at all and
concurrent publishers get distinct consecutive numbers. Files are made read-only
and every reader checks their sha256 against the manifest.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curation.funnel import Funnel, funnel_from_frame, funnel_table_rows
from factory.errors import StillhouseError, name_os_error
from factory.schema import SCHEMA_VERSION, conform, with_label_metadata
from factory.secrets import redact_secrets

DATA_FILE = "data.parquet"
REJECTED_FILE = "rejected.parquet"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REF_PATTERN = re.compile(r"^(?P<name>[^@]+?)(?:@(?:v(?P<version>\d+)|(?P<latest>latest)))?$")
MANIFEST_KEYS = ("schema_version", "name", "version", "rows", "funnel", "files")


class StoreError(StillhouseError):
    """Unknown dataset or version, missing root, or a malformed manifest."""


class CorruptVersionError(StoreError):
    """A file of a published version does not match the sha256 in its manifest."""


def default_root() -> Path:
    return Path(os.environ.get("STILLHOUSE_DATASETS", "datasets_out"))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def code_version() -> dict[str, str | None]:
    """The package version and, when run from a git checkout, its commit."""
    try:
        package_version = importlib.metadata.version("stillhouse")
    except importlib.metadata.PackageNotFoundError:
        package_version = "unknown"
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).resolve().parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"stillhouse": package_version, "git_commit": commit}


@dataclass(frozen=True)
class DatasetVersion:
    """One published version; `read*` verify hashes before returning data."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def data_path(self) -> Path:
        return self.path / DATA_FILE

    @property
    def rejected_path(self) -> Path:
        return self.path / REJECTED_FILE

    @property
    def label_set(self) -> list[str] | None:
        return self.manifest.get("label_set")

    @property
    def manifest_sha256(self) -> str:
        return sha256_file(self.path / MANIFEST_FILE)

    def verify(self) -> None:
        """Raise `CorruptVersionError` naming the first file whose bytes changed."""
        for filename, meta in self.manifest["files"].items():
            path = self.path / filename
            if not path.is_file():
                raise CorruptVersionError(f"{self.ref}: {filename} is missing from {self.path}")
            if sha256_file(path) != meta["sha256"]:
                raise CorruptVersionError(
                    f"{self.ref}: {filename} does not match the sha256 in its manifest (changed after publish)"
                )

    def read(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        """The kept rows (optionally only some columns: Parquet reads just those)."""
        return self._read(self.data_path, columns, verify)

    def read_rejected(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        return self._read(self.rejected_path, columns, verify)

    def read_all(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        """Kept and rejected rows together, as curation saw them."""
        return pl.concat([self.read(columns, verify), self.read_rejected(columns, verify=False)], how="vertical")

    def _read(self, path: Path, columns: list[str] | None, verify: bool) -> pl.DataFrame:
        if verify:
            self.verify()
        return pl.from_arrow(pq.read_table(path, columns=columns))


class DatasetStore:
    """Versions of named datasets under one root directory."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    # -- reading ---------------------------------------------------------------
    def _require_root(self) -> None:
        if not self.root.is_dir():
            raise StoreError(f"dataset root {self.root} does not exist (set --root or STILLHOUSE_DATASETS)")

    def names(self) -> list[str]:
        self._require_root()
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        directory = self.root / name
        if not directory.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in directory.iterdir() if re.fullmatch(r"v\d+", p.name) and p.is_dir())

    def resolve(self, ref: str, verify: bool = True) -> DatasetVersion:
        """Open `name`, `name@latest` or `name@vN`; verifies file hashes unless told not to."""
        self._require_root()
        match = REF_PATTERN.match(ref.strip())
        if not match:
            raise StoreError(f"'{ref}' is not a dataset ref (expected name, name@latest or name@vN)")
        name = match["name"]
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise StoreError(f"unknown dataset '{name}' in {self.root} (datasets: {known})")
        version = int(match["version"]) if match["version"] else versions[-1]
        if version not in versions:
            raise StoreError(f"unknown version {name}@v{version} (versions: {', '.join(f'v{v}' for v in versions)})")
        dataset = DatasetVersion(name, version, self.root / name / f"v{version}", self._load_manifest(name, version))
        if verify:
            dataset.verify()
        return dataset

    def _load_manifest(self, name: str, version: int) -> dict[str, Any]:
        path = self.root / name / f"v{version}" / MANIFEST_FILE
        ref = f"{name}@v{version}"
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(f"{ref}: {MANIFEST_FILE} is missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(f"{ref}: {path} is malformed ({exc})") from None
        if not isinstance(manifest, dict):
            raise StoreError(f"{ref}: {path} is malformed (not a JSON object)")
        missing = [key for key in MANIFEST_KEYS if key not in manifest]
        if missing:
            raise StoreError(f"{ref}: {path} is malformed (missing keys: {', '.join(missing)})")
        if manifest["schema_version"] > SCHEMA_VERSION:
            raise StoreError(
                f"{ref}: schema version {manifest['schema_version']} is newer than this Stillhouse reads "
                f"({SCHEMA_VERSION}); upgrade stillhouse"
            )
        if not isinstance(manifest["files"], dict) or not all(
            isinstance(meta, dict) and "sha256" in meta for meta in manifest["files"].values()
        ):
            raise StoreError(f"{ref}: {path} is malformed ('files' must map each file to its sha256)")
        return manifest

    # -- writing ---------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with open(self.root / name / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def publish(
        self,
        name: str,
        frame: pl.DataFrame | pa.Table,
        *,
        parent: str | None = None,
        config: dict[str, Any] | None = None,
        funnel: Funnel | None = None,
        label_set: list[str] | None = None,
        description: str = "",
        extra_files: dict[str, bytes] | None = None,
    ) -> DatasetVersion:
        """Publish a curated frame as the next version of `name`.

        Rows with a null `drop_stage` go to data.parquet, the others to rejected.parquet.
        `funnel` defaults to one derived from the drop columns. `config` is stored with
        secrets redacted. Returns the new, verified version.
        """
        if not NAME_PATTERN.match(name):
            raise StoreError(f"invalid dataset name '{name}' (letters, digits, '.', '_', '-'; no '@' or '/')")
        if parent is not None:
            parent = self.resolve(parent, verify=False).ref  # canonical name@vN, and it must exist
        table = with_label_metadata(conform(frame), label_set)  # trainers see the label order in the files
        whole = pl.from_arrow(table)
        kept_mask = table.column("drop_stage").is_null()
        kept, rejected = table.filter(kept_mask), table.filter(pa.compute.invert(kept_mask))
        funnel = funnel if funnel is not None else funnel_from_frame(whole)

        directory = self.root / name
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f".tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for filename, part in ((DATA_FILE, kept), (REJECTED_FILE, rejected)):
                pq.write_table(part, staging / filename, compression="zstd")
            for filename, content in (extra_files or {}).items():
                (staging / filename).write_bytes(content)
            manifest: dict[str, Any] = {
                "schema_version": SCHEMA_VERSION,
                "name": name,
                "parent": parent,
                "description": description,
                "code_version": code_version(),
                "config": redact_secrets(config or {}),
                "rows": {"kept": kept.num_rows, "rejected": rejected.num_rows, "total": table.num_rows},
                "funnel": funnel,
                "label_set": label_set,
                "columns": {field.name: str(field.type) for field in table.schema},
            }
            with self._locked(name):
                version = (self.versions(name) or [0])[-1] + 1
                manifest.update(version=version, created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))
                (staging / CARD_FILE).write_text(dataset_card(manifest), encoding="utf-8")
                manifest["files"] = {
                    path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size}
                    for path in sorted(staging.iterdir())
                }
                (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
                for path in staging.iterdir():
                    _fsync(path)
                    path.chmod(0o444)
                os.rename(staging, directory / f"v{version}")
                _fsync(directory)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            name_os_error(exc, directory)
            raise
        return self.resolve(f"{name}@v{version}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def dataset_card(manifest: dict[str, Any]) -> str:
    """The README.md of a version: what it is, where it came from, how to load it."""
    ref = f"{manifest['name']}@v{manifest['version']}"
    rows, code = manifest["rows"], manifest["code_version"]
    lines = [
        f"# {ref}",
        "",
        manifest.get("description") or "A dataset version published by Stillhouse.",
        "",
        f"- parent: {manifest.get('parent') or 'none'}",
        f"- created: {manifest['created_at']}",
        f"- rows: {rows['kept']} kept, {rows['rejected']} rejected ({rows['total']} total)",
        f"- stillhouse {code['stillhouse']} (commit {code['git_commit'] or 'unknown'})",
    ]
    if manifest.get("label_set"):
        lines.append(f"- label set ({len(manifest['label_set'])}): {', '.join(manifest['label_set'])}")
    lines += ["", "## Funnel", "", "| stage | rows in | dropped | rows out |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in funnel_table_rows(manifest["funnel"])] or ["| (no curation) | | | |"]
    lines += ["", "## Columns", "", "| column | type |", "|---|---|"]
    lines += [f"| {name} | `{kind}` |" for name, kind in manifest["columns"].items()]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "import polars as pl",
        f'kept = pl.read_parquet("{DATA_FILE}")',
        "from datasets import load_dataset",
        f'ds = load_dataset("parquet", data_files={{"train": "{DATA_FILE}"}})["train"]',
        "```",
        "",
        f"Rejected rows, with `drop_stage` and `drop_reason`, are in `{REJECTED_FILE}`. "
        f"`stillhouse datasets verify {ref}` checks every file against `{MANIFEST_FILE}`.",
        "",
    ]
    return "\n".join(lines)
