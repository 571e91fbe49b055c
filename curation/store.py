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
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from curation.funnel import Funnel, funnel_from_frame, funnel_table_rows
from factory.atomic import fsync_path
from factory.errors import MACHINE_FAULT_ERRNOS, StillhouseError, name_os_error
from factory.schema import SCHEMA_VERSION, conform, with_label_metadata
from factory.secrets import redact_secrets
from factory.storage import as_location, filesystem, is_local, join

DATA_FILE = "data.parquet"
REJECTED_FILE = "rejected.parquet"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
CLAIM_FILE = ".claim"
SEAL_KEY = "seal"
STAGING_PREFIX = ".tmp-"
LEGACY_STAGING_TTL_S = 3600
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
REF_PATTERN = re.compile(r"^(?P<name>[^@]+?)(?:@(?:v(?P<version>\d+)|(?P<latest>latest)))?$")
MANIFEST_KEYS = ("schema_version", "name", "version", "rows", "funnel", "files")


class StoreError(StillhouseError):
    """Unknown dataset or version, missing root, or a malformed manifest."""


class CorruptVersionError(StoreError):
    """A file of a published version does not match the sha256 in its manifest."""


def default_root() -> Path | str:
    """$STILLHOUSE_DATASETS, else $STILLHOUSE_HOME/datasets_out, else ./datasets_out: set either
    variable and every command finds the same store from any directory."""
    if os.environ.get("STILLHOUSE_DATASETS"):
        return as_location(os.environ["STILLHOUSE_DATASETS"])
    if os.environ.get("STILLHOUSE_HOME"):
        return Path(os.environ["STILLHOUSE_HOME"]) / "datasets_out"
    return Path("datasets_out")


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
    """One published version; `read*` verify hashes and row counts before returning data.

    `path` is a local `Path`, or a URL string for a store on object storage.
    """

    name: str
    version: int
    path: Path | str
    manifest: dict[str, Any]
    fs: AbstractFileSystem = field(default_factory=LocalFileSystem, compare=False, repr=False)

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def data_path(self) -> Path | str:
        return join(self.path, DATA_FILE)

    @property
    def rejected_path(self) -> Path | str:
        return join(self.path, REJECTED_FILE)

    @property
    def label_set(self) -> list[str] | None:
        return self.manifest.get("label_set")

    @property
    def manifest_sha256(self) -> str:
        return self._sha256(MANIFEST_FILE)

    def _fs_path(self, filename: str) -> str:
        return self.fs._strip_protocol(str(join(self.path, filename)))

    def _sha256(self, filename: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self._fs_path(filename), "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def read_bytes(self, filename: str) -> bytes:
        """A file of this version, checked against its manifest sha256."""
        if filename not in self.manifest["files"]:
            raise StoreError(f"{self.ref}: {filename} is not a file of this version")
        content = self.fs.cat_file(self._fs_path(filename))
        if hashlib.sha256(content).hexdigest() != self.manifest["files"][filename]["sha256"]:
            raise CorruptVersionError(
                f"{self.ref}: {filename} does not match the sha256 in its manifest (changed after publish)"
            )
        return content

    def verify(self) -> None:
        """Raise `CorruptVersionError` naming the first file whose bytes changed, or whose rows
        disagree with the manifest (the manifest's own seal is checked when it is loaded)."""
        for filename, meta in self.manifest["files"].items():
            if not self.fs.isfile(self._fs_path(filename)):
                raise CorruptVersionError(f"{self.ref}: {filename} is missing from {self.path}")
            if self._sha256(filename) != meta["sha256"]:
                raise CorruptVersionError(
                    f"{self.ref}: {filename} does not match the sha256 in its manifest (changed after publish)"
                )
        rows = self.manifest["rows"]
        counted = {}
        for key, filename in (("kept", DATA_FILE), ("rejected", REJECTED_FILE)):
            with self.fs.open(self._fs_path(filename), "rb") as handle:
                counted[key] = pq.ParquetFile(handle).metadata.num_rows
            if counted[key] != rows.get(key):
                raise CorruptVersionError(
                    f"{self.ref}: {MANIFEST_FILE} says {rows.get(key)} {key} rows, {filename} has {counted[key]}"
                )
        if rows.get("total") != counted["kept"] + counted["rejected"]:
            raise CorruptVersionError(
                f"{self.ref}: {MANIFEST_FILE} says {rows.get('total')} rows in total, the files hold "
                f"{counted['kept'] + counted['rejected']}"
            )
        if self.label_set:
            known = set(self.label_set)
            for filename in (DATA_FILE, REJECTED_FILE):
                labels = self._read(self._fs_path(filename), ["label"], verify=False, missing_ok=True)
                if labels is None:
                    continue
                unknown = sorted(set(labels["label"].drop_nulls().unique().to_list()) - known)
                if unknown:
                    raise CorruptVersionError(
                        f"{self.ref}: {filename} has label '{unknown[0]}', which is not in the manifest's label set"
                    )

    def read(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        """The kept rows (optionally only some columns: Parquet reads just those)."""
        return self._read(self._fs_path(DATA_FILE), columns, verify)

    def read_rejected(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        return self._read(self._fs_path(REJECTED_FILE), columns, verify)

    def read_all(self, columns: list[str] | None = None, verify: bool = True) -> pl.DataFrame:
        """Kept and rejected rows together, as curation saw them."""
        return pl.concat([self.read(columns, verify), self.read_rejected(columns, verify=False)], how="vertical")

    def _read(self, path: str, columns: list[str] | None, verify: bool, missing_ok: bool = False) -> Any:
        if verify:
            self.verify()
        if missing_ok:
            with self.fs.open(path, "rb") as handle:
                if columns and not set(columns) <= set(pq.ParquetFile(handle).schema_arrow.names):
                    return None
        return pl.from_arrow(pq.read_table(path, columns=columns, filesystem=self.fs))


@dataclass(frozen=True)
class Listing:
    """One dataset in `DatasetStore.listing()`: its versions and latest version, or why it cannot be read."""

    name: str
    versions: list[int]
    latest: DatasetVersion | None
    error: str | None = None


class DatasetStore:
    """Versions of named datasets under one root: a local directory or an fsspec URL (`s3://bucket/prefix`).

    Local: each version is staged in `.tmp-<host>-<pid>-<uuid>/` and renamed into place
    under the name's lock file. Object storage (no rename, no locks): a publisher takes
    version N by creating `v<N>/.claim` with a conditional write (`IfNoneMatch: *`), so
    two publishers never share a number; it uploads the files and writes `manifest.json`
    last, and a version is visible only once its manifest exists. A claim whose publisher
    died leaves a gap in the numbers, never a half version.
    """

    def __init__(self, root: Path | str | None = None, storage_options: dict[str, Any] | None = None) -> None:
        self.root: Path | str = as_location(root) if root is not None else default_root()
        self.fs, self._base = filesystem(self.root, **(storage_options or {}))
        self.local = is_local(self.fs)

    def _path(self, *parts: str) -> str:
        return "/".join([self._base.rstrip("/"), *parts])

    def _location(self, *parts: str) -> Path | str:
        return join(self.root, *parts)

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """OS and network errors become one line naming the store location."""
        try:
            yield
        except (StillhouseError, FileNotFoundError):
            raise
        except OSError as exc:
            if self.local and exc.errno in MACHINE_FAULT_ERRNOS:
                name_os_error(exc, self._base)
                raise  # the CLI names the path and what to do about the machine
            raise StoreError(f"{what} in {self.root}: {exc}") from None
        except Exception as exc:
            if self.local:
                raise
            # object-storage clients raise their own types (e.g. botocore's EndpointConnectionError)
            raise StoreError(f"{what} in {self.root}: {type(exc).__name__}: {exc}") from None

    # -- reading ---------------------------------------------------------------
    def exists(self) -> bool:
        with self._io("cannot read the dataset root"):
            if self.local:
                return Path(self._base).is_dir()
            try:
                self.fs.ls(self._base.split("/")[0], detail=False)
            except FileNotFoundError:
                return False
            return True

    def _require_root(self) -> None:
        if not self.exists():
            if self.local:
                raise StoreError(
                    f"dataset root {self.root} does not exist (set --root, STILLHOUSE_DATASETS or STILLHOUSE_HOME)"
                )
            raise StoreError(f"dataset root {self.root}: bucket '{self._base.split('/')[0]}' does not exist")

    def names(self) -> list[str]:
        self._require_root()
        with self._io("cannot list datasets"):
            if self.local:
                return sorted(p.name for p in Path(self._base).iterdir() if p.is_dir() and self.versions(p.name))
            self.fs.invalidate_cache()
            if not self.fs.exists(self._base):
                return []
            children = [entry.rstrip("/").rsplit("/", 1)[-1] for entry in self.fs.ls(self._base, detail=False)]
            return sorted(name for name in children if NAME_PATTERN.match(name) and self.versions(name))

    def versions(self, name: str) -> list[int]:
        """Published version numbers of `name` (on object storage: those whose manifest exists)."""
        with self._io(f"cannot list the versions of '{name}'"):
            if self.local:
                directory = Path(self._base) / name
                if not directory.is_dir():
                    return []
                return sorted(
                    int(p.name[1:]) for p in directory.iterdir() if re.fullmatch(r"v\d+", p.name) and p.is_dir()
                )
            return self._numbers(name, MANIFEST_FILE)

    def _numbers(self, name: str, marker: str) -> list[int]:
        """Versions of `name` on object storage whose `v<N>/<marker>` object exists."""
        self.fs.invalidate_cache()
        found = self.fs.glob(self._path(name, "v*", marker))
        numbers = (re.fullmatch(r"v(\d+)", path.rstrip("/").split("/")[-2]) for path in found)
        return sorted(int(match[1]) for match in numbers if match)

    def listing(self) -> list[Listing]:
        """Every dataset with its latest version; a dataset whose manifest cannot be read is listed
        with the error instead of failing the whole listing. Cleans dead publishers' staging dirs."""
        entries = []
        for name in self.names():
            if self.local:
                self._clean_stale_staging(Path(self._base) / name)
            versions = self.versions(name)
            try:
                entries.append(Listing(name, versions, self.resolve(f"{name}@v{versions[-1]}", verify=False)))
            except StoreError as exc:
                entries.append(Listing(name, versions, None, str(exc)))
        return entries

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
        dataset = DatasetVersion(
            name, version, self._location(name, f"v{version}"), self._load_manifest(name, version), self.fs
        )
        if verify:
            with self._io(f"cannot read {dataset.ref}"):
                dataset.verify()
        return dataset

    def _load_manifest(self, name: str, version: int) -> dict[str, Any]:
        path = self._location(name, f"v{version}", MANIFEST_FILE)
        ref = f"{name}@v{version}"
        try:
            with self._io(f"cannot read {ref}"):
                manifest = json.loads(self.fs.cat_file(self._path(name, f"v{version}", MANIFEST_FILE)).decode("utf-8"))
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
        if manifest.get(SEAL_KEY) != manifest_seal(manifest):
            raise CorruptVersionError(
                f"{ref}: {MANIFEST_FILE} does not match its seal (edited after publish)"
                if SEAL_KEY in manifest
                else f"{ref}: {MANIFEST_FILE} has no seal (published before manifests were sealed, or edited)"
            )
        return manifest

    # -- writing ---------------------------------------------------------------
    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        with open(Path(self._base) / name / ".lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _published_with_key(self, name: str, key: str) -> DatasetVersion | None:
        """The version of `name` published with `key`, if any (newest first; unreadable ones skipped)."""
        for number in reversed(self.versions(name)):
            try:
                candidate = self.resolve(f"{name}@v{number}", verify=False)
            except StoreError:
                continue
            if candidate.manifest.get("publish_key") == key:
                return candidate
        return None

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
        key: str | None = None,
        teacher: dict[str, int] | None = None,
    ) -> DatasetVersion:
        """Publish a curated frame as the next version of `name`.

        Rows with a null `drop_stage` go to data.parquet, the others to rejected.parquet.
        `funnel` defaults to one derived from the drop columns. `config` is stored with
        secrets redacted. `key` makes the publish idempotent: when a version of `name`
        was already published with the same key (checked under the lock), that version is
        returned and nothing new is written. `teacher`: the requests the steps behind this
        data left unanswered (failed, not issued) and kept samples without token ids, shown
        on the card. Returns the new, verified version.
        """
        if not NAME_PATTERN.match(name):
            raise StoreError(f"invalid dataset name '{name}' (letters, digits, '.', '_', '-'; no '@' or '/')")
        if parent is not None:
            parent = self.resolve(parent, verify=False).ref  # canonical name@vN, and it must exist
        table = with_label_metadata(conform(frame), label_set)  # trainers see the label order in the files
        whole = pl.from_arrow(table)
        if label_set:  # a version readers would refuse is never written
            unknown = whole.with_row_index("_row").filter(
                pl.col("label").is_not_null() & ~pl.col("label").is_in(list(label_set))
            )
            if unknown.height:
                row, label = unknown["_row"][0], unknown["label"][0]
                raise StoreError(
                    f"cannot publish '{name}': row {row} has label '{label}', which is not in the label_set"
                )
        kept_mask = table.column("drop_stage").is_null()
        kept, rejected = table.filter(kept_mask), table.filter(pa.compute.invert(kept_mask))
        funnel = funnel if funnel is not None else funnel_from_frame(whole)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": name,
            "parent": parent,
            "publish_key": key,
            "description": description,
            "code_version": code_version(),
            "config": redact_secrets(config or {}),
            "rows": {"kept": kept.num_rows, "rejected": rejected.num_rows, "total": table.num_rows},
            "funnel": funnel,
            "label_set": label_set,
            "teacher": teacher,
            "columns": {field.name: str(field.type) for field in table.schema},
        }
        parts = {DATA_FILE: kept, REJECTED_FILE: rejected}
        with self._io(f"cannot publish '{name}'"):
            if self.local:
                version = self._publish_local(name, manifest, parts, extra_files or {}, key)
            else:
                version = self._publish_object(name, manifest, parts, extra_files or {}, key)
        return self.resolve(f"{name}@v{version}")

    def _publish_local(
        self, name: str, manifest: dict[str, Any], parts: dict[str, pa.Table], extra: dict[str, bytes], key: str | None
    ) -> int:
        directory = Path(self._base) / name
        directory.mkdir(parents=True, exist_ok=True)
        staging = directory / f"{STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for filename, part in parts.items():
                pq.write_table(part, staging / filename, compression="zstd")
            for filename, content in extra.items():
                (staging / filename).write_bytes(content)
            with self._locked(name):
                self._clean_stale_staging(directory)
                if key is not None and (existing := self._published_with_key(name, key)) is not None:
                    shutil.rmtree(staging, ignore_errors=True)
                    return existing.version
                version = (self.versions(name) or [0])[-1] + 1
                _finish_manifest(manifest, version, staging)
                (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
                for path in staging.iterdir():
                    fsync_path(path)
                    path.chmod(0o444)
                os.rename(staging, directory / f"v{version}")
                fsync_path(directory)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            name_os_error(exc, directory)
            raise
        return version

    def _publish_object(
        self, name: str, manifest: dict[str, Any], parts: dict[str, pa.Table], extra: dict[str, bytes], key: str | None
    ) -> int:
        blobs = dict(extra)
        for filename, part in parts.items():
            sink = pa.BufferOutputStream()
            pq.write_table(part, sink, compression="zstd")
            blobs[filename] = sink.getvalue().to_pybytes()
        if key is not None:
            existing = self._claim_key(name, key)
            if existing is not None:
                return existing
        claim = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "at": _now()}).encode()
        version = max([0, *self._numbers(name, CLAIM_FILE), *self.versions(name)]) + 1
        while True:
            try:
                self.fs.pipe_file(self._path(name, f"v{version}", CLAIM_FILE), claim, mode="create")
                break
            except FileExistsError:  # another publisher took this number first
                version += 1
        prefix = self._path(name, f"v{version}")
        blobs[CARD_FILE] = dataset_card(_finish_manifest(manifest, version, None)).encode("utf-8")
        manifest["files"] = {
            filename: {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
            for filename, blob in sorted(blobs.items())
        }
        manifest[SEAL_KEY] = manifest_seal(manifest)
        for filename, blob in blobs.items():
            self.fs.pipe_file(f"{prefix}/{filename}", blob)
        # the manifest last: the version becomes visible only now, whole
        self.fs.pipe_file(f"{prefix}/{MANIFEST_FILE}", (json.dumps(manifest, indent=2) + "\n").encode(), mode="create")
        return version

    def _claim_key(self, name: str, key: str, wait_s: float = 120.0) -> int | None:
        """On object storage, the atomic existence check of an idempotent publish: the first publisher
        with `key` creates `.keys/<sha256(key)>`; a later one waits for that version to appear."""
        marker = self._path(name, ".keys", hashlib.sha256(key.encode()).hexdigest())
        try:
            self.fs.pipe_file(marker, _now().encode(), mode="create")
            return None
        except FileExistsError:
            pass
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            existing = self._published_with_key(name, key)
            if existing is not None:
                return existing.version
            time.sleep(1.0)
        raise StoreError(
            f"another publisher of '{name}' with the same key has not finished after {wait_s:.0f} s "
            f"({self._location(name, '.keys', marker.rsplit('/', 1)[-1])}); if it died, delete that object and retry"
        )

    def _clean_stale_staging(self, directory: Path) -> None:
        """Remove staging dirs of publishers that died (killed mid-publish) on this host."""
        host = socket.gethostname()
        try:
            entries = [p for p in directory.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir()]
        except OSError:
            return
        for entry in entries:
            match = re.fullmatch(rf"{re.escape(STAGING_PREFIX)}(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{{32}}", entry.name)
            if match is None:  # an older Stillhouse's staging dir (no pid): stale once old
                stale = time.time() - entry.stat().st_mtime > LEGACY_STAGING_TTL_S
            else:
                stale = match["host"] == host and not _alive(int(match["pid"]))
            if stale:
                shutil.rmtree(entry, ignore_errors=True)


def manifest_seal(manifest: dict[str, Any]) -> str:
    """The sha256 of the manifest's canonical JSON without its seal: any edit of counts,
    label set, funnel or file hashes changes it."""
    body = {key: value for key, value in manifest.items() if key != SEAL_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _finish_manifest(manifest: dict[str, Any], version: int, staging: Path | None) -> dict[str, Any]:
    """Number the manifest and, for a local staging dir, write the card and seal the file list."""
    manifest.update(version=version, created_at=_now())
    if staging is None:
        return manifest
    (staging / CARD_FILE).write_text(dataset_card(manifest), encoding="utf-8")
    manifest["files"] = {
        path.name: {"sha256": sha256_file(path), "bytes": path.stat().st_size} for path in sorted(staging.iterdir())
    }
    manifest[SEAL_KEY] = manifest_seal(manifest)
    return manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    teacher = manifest.get("teacher")
    if teacher:
        lines.append(
            f"- teacher: {teacher['failed_requests']} requests failed and {teacher['not_issued_requests']} were not "
            f"issued (their rows are rejected as teacher_error / not_issued); "
            f"{teacher['kept_samples_without_token_ids']} kept samples without token ids"
        )
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
