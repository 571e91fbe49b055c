"""`teacher: {backend: openai, mode: batch}`: the provider's batch API instead of online requests.

The requests go into the provider's batch JSONL (one `POST /v1/chat/completions` body
per line, each with a `custom_id`), which is uploaded (`/v1/files`) and submitted
(`/v1/batches`); the teacher polls with a growing wait behind a progress bar, downloads
the output and error files and maps every line back to its request by `custom_id`.
Batches are split at the provider's limits (requests and bytes per file).

Resumable: every submission is written to `openai_batches.json` in the teacher's cache
directory (atomically) before it is sent and again once the batch id is known, and it
carries that submission's key in the batch's metadata. A run killed while waiting finds
its batches there (or, killed between sending and recording, in the provider's batch
list) and polls them again: the same requests are never submitted twice.

Failure semantics are the online ones: a line with an error, a line an expired or
failed batch never answered, or a malformed answer is a failed request (never cached,
asked again by the next run); a line answered is cached like an online answer. The
shared machinery reserves every request's worst case against the budget before a
batch is submitted and bills what the provider reports, at the batch price.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import openai

from factory.atomic import write_text_atomic
from factory.teachers.base import Generation, TeacherRequest, Usage
from factory.teachers.config import OpenAITeacherConfig
from factory.teachers.errors import TeacherError
from factory.teachers.openai_backend import OpenAITeacher, read_api_key

STATE_FILE_NAME = "openai_batches.json"
ENDPOINT = "/v1/chat/completions"
TERMINAL = ("completed", "failed", "expired", "cancelled")
_METADATA_KEY = "stillhouse_submission"


def custom_id(cache_key: str) -> str:
    """A batch line's id: its request's cache key, shortened (a provider allows 64 characters)."""
    return f"req-{cache_key[:32]}"


class BatchState:
    """The submissions of this teacher's cache directory: {submission key: entry}.

    An entry holds `custom_ids` ({custom_id: cache key}), the `batch_id` once known, and
    `returned` (the cache keys answered) once its results were handed to the machinery.
    Every change is written to a temporary file and renamed over the old one.
    """

    def __init__(self, directory: Path | None):
        self.path = Path(directory) / STATE_FILE_NAME if directory is not None else None
        self.entries: dict[str, dict[str, Any]] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())["submissions"]
            except (ValueError, KeyError, TypeError) as error:
                raise TeacherError(
                    f"{self.path}: unreadable batch state ({error}); move it away to start over"
                ) from error

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({"submissions": self.entries}))


class OpenAIBatchTeacher(OpenAITeacher):
    batched = True  # the machinery hands over whole chunks (after reserving their budget)

    def __init__(self, config: OpenAITeacherConfig, state_dir: Path | None = None, **machinery: Any):
        super().__init__(config, **machinery)
        self.settings = config.batch
        self.state = BatchState(state_dir)
        self._sync_client = openai.OpenAI(
            base_url=self.base_url, api_key=read_api_key(config), max_retries=3, timeout=config.timeout_s
        )

    def _chunk_size(self) -> int:
        # Every request of a call at once: they are split into batch files at the provider's
        # limits, all submitted, then waited for together.
        return 1 << 30

    # -- files for an offline runner (vLLM's run_batch) -------------------------------
    def batch_file(self, requests: list[TeacherRequest]) -> bytes:
        """The provider's batch JSONL for `requests` (one line per distinct request), as
        uploaded online; also the input of `python -m vllm.entrypoints.openai.run_batch`."""
        keys = dict.fromkeys(self.cache_key(request) for request in requests)
        by_key = {self.cache_key(request): request for request in requests}
        return b"".join(line for lines in self._split([(k, by_key[k]) for k in keys]) for _, _, line in lines)

    def generations_from_output(self, requests: list[TeacherRequest], content: str) -> list[Generation]:
        """Map an output JSONL (a provider's, or vLLM run_batch's) back to `requests` by custom_id;
        a request without an answer line comes back failed, as online."""
        by_line_id = {custom_id(self.cache_key(r)): r for r in requests}
        answers: dict[str, Generation | str] = {}
        for line in content.splitlines():
            if line.strip():
                row = json.loads(line)
                request = by_line_id.get(row.get("custom_id"))
                if request is not None:
                    answers[row["custom_id"]] = self._line_answer("file", row, request)
        generations = []
        for request in requests:
            answer = answers.get(custom_id(self.cache_key(request)), "not answered: no line for it in the output file")
            if isinstance(answer, str):
                generations.append(Generation(request=request, teacher=self.identity, error=answer))
            else:
                generations.append(dataclasses.replace(answer, request=request))
        return generations

    # -- one chunk: find or submit its batches, wait, map the lines back --------------
    def _generate_batch(self, requests: list[TeacherRequest]) -> list[Generation]:
        self._prune()
        self._recover_unrecorded()
        keys = [self.cache_key(request) for request in requests]
        wanted = set(keys)
        adopted = {
            sub: entry for sub, entry in self.state.entries.items() if wanted & set(entry["custom_ids"].values())
        }
        covered = {key for entry in adopted.values() for key in entry["custom_ids"].values()}
        first_of: dict[str, int] = {}
        for index, key in enumerate(keys):
            if key not in covered:
                first_of.setdefault(key, index)  # repeated requests are asked once
        for lines in self._split([(key, requests[index]) for key, index in first_of.items()]):
            submission, entry = self._submit(lines)
            adopted[submission] = entry
        by_key = dict(zip(keys, requests))
        answers = self._wait_and_download(adopted, by_key)  # cache key -> Generation or error message
        generations, billed = [], set()
        for request, key in zip(requests, keys):
            answer = answers.get(key, "not answered: its batch line was not found in the output or error file")
            if isinstance(answer, str):
                generations.append(Generation(request=request, teacher=self.identity, error=answer))
            elif key in billed:  # a repeated request: a copy of the one answer, billed once
                generations.append(dataclasses.replace(answer, request=request, usage=Usage()))
            else:
                generations.append(dataclasses.replace(answer, request=request))
                billed.add(key)
        answered = {key for key, answer in answers.items() if not isinstance(answer, str)}
        for entry in adopted.values():
            entry["returned"] = sorted(answered & set(entry["custom_ids"].values()))
        self.state.save()
        return generations

    def _split(self, pending: list[tuple[str, TeacherRequest]]) -> list[list[tuple[str, str, bytes]]]:
        """Batch files of at most `max_requests` lines and `max_bytes` bytes: (custom_id, key, line)."""
        files, current, size = [], [], 0
        for key, request in pending:
            line_id = custom_id(key)
            line = json.dumps({"custom_id": line_id, "method": "POST", "url": ENDPOINT, "body": self._body(request)},
                              separators=(",", ":")).encode() + b"\n"  # fmt: skip
            if len(line) > self.settings.max_bytes:
                raise TeacherError(
                    f"one batch request is {len(line):,} bytes, over batch.max_bytes ({self.settings.max_bytes:,})"
                )
            if current and (len(current) >= self.settings.max_requests or size + len(line) > self.settings.max_bytes):
                files.append(current)
                current, size = [], 0
            current.append((line_id, key, line))
            size += len(line)
        return files + ([current] if current else [])

    def _submit(self, lines: list[tuple[str, str, bytes]]) -> tuple[str, dict[str, Any]]:
        submission = hashlib.sha256(b"".join(line for _, _, line in lines)).hexdigest()[:32]
        entry = {"custom_ids": {line_id: key for line_id, key, _ in lines}, "batch_id": None}
        # Recorded before sending: killed after the provider took it, a resume finds the
        # batch by this key in its metadata instead of sending it again.
        self.state.entries[submission] = entry
        self.state.save()
        try:
            upload = self._sync_client.files.create(
                file=(f"stillhouse-{submission}.jsonl", b"".join(line for _, _, line in lines)), purpose="batch"
            )
            batch = self._sync_client.batches.create(
                input_file_id=upload.id,
                endpoint=ENDPOINT,
                completion_window=self.settings.completion_window,
                metadata={_METADATA_KEY: submission},
            )
        except openai.APIError as error:
            self.state.entries.pop(submission, None)  # nothing was submitted: nothing to resume
            self.state.save()
            raise TeacherError(f"batch submission to {self.base_url} failed: {_describe(error)}") from error
        entry["batch_id"] = batch.id
        self.state.save()
        return submission, entry

    def _find_submitted(self, submission: str) -> str | None:
        """The id of a batch sent with this submission key before a crash, if the provider has one."""
        for batch in self._sync_client.batches.list(limit=100):
            if (batch.metadata or {}).get(_METADATA_KEY) == submission:
                return batch.id
        return None

    def _recover_unrecorded(self) -> None:
        """Submissions recorded without a batch id (killed between sending and recording it):
        adopt the provider's batch carrying their key, or forget them (never sent)."""
        unrecorded = [submission for submission, entry in self.state.entries.items() if entry["batch_id"] is None]
        if not unrecorded:
            return
        for submission in unrecorded:
            batch_id = self._find_submitted(submission)
            if batch_id is None:
                del self.state.entries[submission]
            else:
                self.state.entries[submission]["batch_id"] = batch_id
        self.state.save()

    def _wait_and_download(
        self, entries: dict[str, dict[str, Any]], requests: dict[str, TeacherRequest]
    ) -> dict[str, Generation | str]:
        from tqdm import tqdm

        total = sum(len(entry["custom_ids"]) for entry in entries.values())
        answers: dict[str, Generation | str] = {}
        open_batches = {entry["batch_id"]: entry for entry in entries.values()}
        wait, done_counts = self.settings.poll_initial_s, {}
        with tqdm(total=total, desc="teacher batch", unit="req", disable=not total) as bar:
            while open_batches:
                for batch_id, entry in list(open_batches.items()):
                    batch = self._retrieve(batch_id)
                    counts = batch.request_counts
                    finished = (counts.completed + counts.failed) if counts else 0
                    bar.update(max(0, finished - done_counts.get(batch_id, 0)))
                    done_counts[batch_id] = max(finished, done_counts.get(batch_id, 0))
                    bar.set_postfix_str(f"{len(open_batches)} batch(es), {batch_id} {batch.status}")
                    if batch.status in TERMINAL:
                        answers.update(self._download(batch, entry, requests))
                        bar.update(max(0, len(entry["custom_ids"]) - done_counts[batch_id]))
                        done_counts[batch_id] = len(entry["custom_ids"])
                        del open_batches[batch_id]
                if open_batches:
                    time.sleep(wait)
                    wait = min(self.settings.poll_max_s, wait * 1.5)
        return answers

    def _retrieve(self, batch_id: str):
        try:
            return self._sync_client.batches.retrieve(batch_id)
        except openai.NotFoundError as error:
            raise TeacherError(
                f"batch {batch_id} is unknown to {self.base_url}; remove it from {self.state.path} to submit again"
            ) from error
        except openai.APIError as error:
            raise TeacherError(f"cannot check batch {batch_id} at {self.base_url}: {_describe(error)}") from error

    def _download(
        self, batch, entry: dict[str, Any], requests: dict[str, TeacherRequest]
    ) -> dict[str, Generation | str]:
        """Every line of a finished batch, by cache key: a Generation or an error message."""
        answers: dict[str, Generation | str] = {}
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            try:
                content = self._sync_client.files.content(file_id).text
            except openai.APIError as error:
                raise TeacherError(f"cannot download {file_id} of batch {batch.id}: {_describe(error)}") from error
            for line in content.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                key = entry["custom_ids"].get(row.get("custom_id"))
                if key is None:
                    continue
                answers[key] = self._line_answer(batch.id, row, requests.get(key))
        problem = "; ".join(error.message or error.code or "" for error in (batch.errors.data if batch.errors else []))
        for key in entry["custom_ids"].values():
            answers.setdefault(
                key, f"batch {batch.id} {batch.status}: not answered" + (f" ({problem})" if problem else "")
            )
        return answers

    def _line_answer(self, batch_id: str, row: dict, request: TeacherRequest | None) -> Generation | str:
        response, error = row.get("response") or {}, row.get("error")
        if error:
            return f"batch {batch_id}: {error.get('code') or 'error'}: {error.get('message') or ''}".strip()
        if response.get("status_code") != 200:
            body = response.get("body") or {}
            message = (body.get("error") or {}).get("message") if isinstance(body, dict) else None
            return f"batch {batch_id}: {response.get('status_code')} from server: {message or 'no message'}"
        if request is None:
            return f"batch {batch_id}: answered a request this call does not hold"
        body = response.get("body")
        if not isinstance(body, dict) or not body.get("choices"):
            return f"batch {batch_id}: answer without choices"
        try:
            return self._to_generation(request, body)
        except (KeyError, TypeError, ValueError, AttributeError) as failure:
            return f"batch {batch_id}: malformed answer ({type(failure).__name__}: {failure})"

    def _prune(self) -> None:
        """Forget submissions whose answers were handed over and are in the cache now."""
        finished = []
        for submission, entry in self.state.entries.items():
            returned = entry.get("returned")
            if returned is None:
                continue
            if self.cache is None or len(self.cache.get_many(returned)) == len(returned):
                finished.append(submission)
        for submission in finished:
            del self.state.entries[submission]
        if finished:
            self.state.save()

    async def close(self) -> None:
        self._prune()
        self._sync_client.close()
        await super().close()


def _describe(error: openai.APIError) -> str:
    status = getattr(error, "status_code", None)
    return f"{status} {error.message}" if status else str(error)
