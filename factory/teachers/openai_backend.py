"""Any OpenAI-compatible chat-completions server (OpenAI, `vllm serve`, llama.cpp, Ollama).

Keeps every sample's text, finish reason, the sampled tokens' logprobs and the top-k
alternatives, and token ids: from the server when it sends them (vLLM's
`return_tokens_as_token_ids`), else recovered with the configured tokenizer;
`Generation.token_ids_source` says which. The API key comes from the environment
variable the config names and is held only by the HTTP client.
"""

from __future__ import annotations

import email.utils
import itertools
import math
import os
import time
from typing import Any
from urllib.parse import urlparse

import httpx
import openai

from factory.teachers.base import Generation, Sample, TeacherIdentity, TeacherRequest, Usage
from factory.teachers.config import OpenAITeacherConfig
from factory.teachers.errors import (
    MissingApiKeyError,
    RequestRejectedError,
    RetryableError,
    ServerUnreachableError,
    TeacherError,
    UnknownModelError,
)
from factory.teachers.limits import completion_token_bound, prompt_token_bound
from factory.teachers.managed import ManagedTeacher
from factory.teachers.token_ids import TokenBytesIndex, parse_token_id

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_MAX_RETRY_AFTER_S = 600.0
CONNECTIONS_PER_CLIENT = 16  # connections per HTTP client (see OpenAITeacher.__init__)


def read_api_key(config: OpenAITeacherConfig) -> str:
    """The key from `config.api_key_env`; local servers (loopback) may run without one."""
    key = os.environ.get(config.api_key_env, "")
    if key:
        return key
    host = urlparse(config.base_url or DEFAULT_BASE_URL).hostname or ""
    if host in _LOOPBACK_HOSTS:
        return "EMPTY"  # vllm serve / llama.cpp / Ollama without --api-key
    raise MissingApiKeyError(
        f"teacher {config.model!r}: environment variable {config.api_key_env} is not set; "
        f"export the API key for {config.base_url or DEFAULT_BASE_URL} there (keys are never read from config files)"
    )


def retry_after_seconds(headers: Any) -> float | None:
    """Retry-After as seconds: `retry-after-ms`, `retry-after` seconds, or an HTTP date."""
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return min(_MAX_RETRY_AFTER_S, float(value) / 1000)
        except ValueError:
            pass  # not a number: fall back to `retry-after`
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return min(_MAX_RETRY_AFTER_S, max(0.0, float(value)))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return None if parsed is None else min(_MAX_RETRY_AFTER_S, max(0.0, parsed.timestamp() - time.time()))


def _is_connect_failure(error: BaseException) -> bool:
    """True when no connection could be opened at all (refused, DNS), as opposed to a
    connection that broke mid-answer."""
    seen = error
    while seen is not None:
        if type(seen).__name__ in {"ConnectError", "ConnectTimeout", "gaierror", "ConnectionRefusedError"}:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class OpenAITeacher(ManagedTeacher):
    def __init__(self, config: OpenAITeacherConfig, **machinery: Any):
        self.config = config
        self.base_url = config.base_url or DEFAULT_BASE_URL
        tokenizer_hash, self._token_index = None, None
        if config.tokenizer:
            from factory.teachers.local_models import load_tokenizer
            from factory.teachers.tokenizers import tokenizer_hash as hash_of

            tokenizer = load_tokenizer(config.tokenizer)
            tokenizer_hash = hash_of(tokenizer)
            self._token_index = TokenBytesIndex(tokenizer)
        identity = TeacherIdentity("openai", config.model, config.tokenizer, tokenizer_hash)
        super().__init__(identity, **machinery)
        # Another endpoint, or ids/logprobs switched on, must not be served old answers.
        self.cache_salt = f"{self.base_url}|ids={config.return_token_ids}|logprobs={config.logprobs}"
        # httpx's pool scans every connection it holds for each request; with hundreds in
        # flight that scan is most of the client's CPU. So connections are spread over
        # small clients (CONNECTIONS_PER_CLIENT each) that requests take in turn.
        api_key = read_api_key(config)
        shards = max(1, math.ceil(self.slots.maximum / CONNECTIONS_PER_CLIENT))
        self._clients = [self._new_client(api_key, config.timeout_s) for _ in range(shards)]
        self._client = self._clients[0]
        self._next_client = itertools.cycle(self._clients).__next__
        self._connected = False

    def _new_client(self, api_key: str, timeout_s: float) -> openai.AsyncOpenAI:
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=0,  # retries are ours: budget- and Retry-After-aware
            timeout=timeout_s + 5.0,  # the machinery's own timeout fires first
            http_client=openai.DefaultAsyncHttpxClient(limits=limits),
        )

    async def _generate_one(self, request: TeacherRequest) -> Generation:
        params = self._body(request)
        try:
            # `post` in wire format both ways: `chat.completions.create` walks the body
            # through the SDK's typed-params transform and builds pydantic models of the
            # answer, ~2 ms of CPU per request, which caps throughput at high concurrency
            # on a small machine. The answer stays the plain JSON dict.
            response = await self._next_client().post("/chat/completions", body=params, cast_to=object)
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            raise self._classify(error) from error
        self._connected = True
        if not isinstance(response, dict) or not response.get("choices"):
            raise RetryableError("server answered without choices", maybe_billed=True)
        try:
            return self._to_generation(request, response)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RetryableError(f"malformed answer ({type(error).__name__}: {error})", maybe_billed=True) from error

    def _body(self, request: TeacherRequest) -> dict[str, Any]:
        """The chat-completions request body (online, and each line of a batch file)."""
        params: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.openai_messages(),
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            params["stop"] = list(request.stop)
        if request.seed is not None:
            params["seed"] = request.seed
        for penalty in ("presence_penalty", "frequency_penalty"):
            if getattr(request, penalty):
                params[penalty] = getattr(request, penalty)
        want_logprobs = self.config.logprobs or request.top_logprobs > 0
        if want_logprobs:
            params["logprobs"] = True
            if request.top_logprobs > 0:
                params["top_logprobs"] = request.top_logprobs
        if self.config.return_token_ids:
            params["return_tokens_as_token_ids"] = True  # vLLM's extension
        return params

    def _classify(self, error: Exception) -> Exception:
        where = f"{self.base_url} (model {self.config.model!r})"
        if isinstance(error, openai.RateLimitError):
            retry_after = retry_after_seconds(error.response.headers)
            return RetryableError("429 rate limited", retry_after=retry_after, congestion=True)
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return TeacherError(f"{where} rejected the API key from ${self.config.api_key_env} ({error.status_code})")
        if isinstance(error, openai.NotFoundError):
            return UnknownModelError(
                f"unknown model {self.config.model!r}: {self.base_url} answered 404 ({_server_message(error)})"
            )
        if isinstance(error, openai.APIStatusError):
            if error.status_code >= 500 or error.status_code in (408, 409):
                retry_after = retry_after_seconds(error.response.headers)
                return RetryableError(
                    f"{error.status_code} from server", retry_after=retry_after, congestion=error.status_code == 503
                )
            return RequestRejectedError(f"{error.status_code} from {where}: {_server_message(error)}")
        if isinstance(error, openai.APITimeoutError):
            return RetryableError("request timed out", maybe_billed=True, congestion=True)
        if isinstance(error, openai.APIConnectionError) and _is_connect_failure(error) and not self._connected:
            return ServerUnreachableError(f"cannot reach the teacher server at {self.base_url}: connection failed")
        # Broken connection mid-answer, truncated or malformed body: worth another try.
        return RetryableError(f"bad response ({type(error).__name__}: {str(error)[:120]})", maybe_billed=True)

    def _to_generation(self, request: TeacherRequest, response: dict) -> Generation:
        samples, sources = [], set()
        for choice in sorted(response["choices"], key=lambda choice: choice.get("index") or 0):
            sample, source = self._to_sample(choice)
            samples.append(sample)
            sources.add(source)
        usage = response.get("usage") or {}
        if usage.get("prompt_tokens") is not None:
            counted = Usage(usage["prompt_tokens"] or 0, usage.get("completion_tokens") or 0)
        else:  # no usage reported: bill the bound so the budget stays a hard cap
            lengths = [len(sample.logprobs) for sample in samples]
            completion = sum(lengths) if samples and all(lengths) else completion_token_bound(request)
            counted = Usage(prompt_token_bound(request), completion)
        source = sources.pop() if len(sources) == 1 else ("mixed" if sources - {None} else None)
        return Generation(
            request=request, teacher=self.identity, samples=samples, usage=counted, token_ids_source=source
        )

    def _to_sample(self, choice: dict) -> tuple[Sample, str | None]:
        text = (choice.get("message") or {}).get("content") or ""
        content = (choice.get("logprobs") or {}).get("content") or []
        sample = Sample(text=text, finish_reason=choice.get("finish_reason"))
        if not content:
            return sample, None
        sample.logprobs = [float(entry["logprob"]) for entry in content]
        top = [entry.get("top_logprobs") or [] for entry in content]
        server_ids = [parse_token_id(entry["token"]) for entry in content]
        if all(token_id is not None for token_id in server_ids):
            sample.token_ids = server_ids  # type: ignore[assignment]
            sample.top_ids = [[parse_token_id(alt["token"]) for alt in alts] for alts in top]  # type: ignore[misc]
            sample.top_logprobs = [[float(alt["logprob"]) for alt in alts] for alts in top]
            if self.config.return_token_ids and text == "":
                sample.text = "".join(entry["token"] for entry in content)
            return sample, "server"
        if self._token_index is None:
            # No ids to be had: keep the logprobs, leave ids empty rather than guess.
            sample.top_logprobs = [[float(alt["logprob"]) for alt in alts] for alts in top]
            return sample, None
        ids = [self._token_index.lookup(entry["token"], entry.get("bytes")) for entry in content]
        # Sampled ids stay aligned with logprobs or are not given at all.
        sample.token_ids = ids if all(token_id is not None for token_id in ids) else []  # type: ignore[assignment]
        for alts in top:
            pairs = [(self._token_index.lookup(alt["token"], alt.get("bytes")), float(alt["logprob"])) for alt in alts]
            pairs = [(token_id, logprob) for token_id, logprob in pairs if token_id is not None]
            sample.top_ids.append([token_id for token_id, _ in pairs])
            sample.top_logprobs.append([logprob for _, logprob in pairs])
        return sample, "tokenizer" if sample.token_ids else None

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        await super().close()


def _server_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return str(error)[:200]
