"""Any OpenAI-compatible chat-completions server (OpenAI, `vllm serve`, llama.cpp, Ollama).

Keeps every sample's text, finish reason, the sampled tokens' logprobs and the top-k
alternatives, and token ids. Before its first request the teacher asks the server what
it is (`GET /models`, once): vLLM is asked for `token_id:N` tokens
(`return_tokens_as_token_ids`, which vLLM 0.32 applies to sampled and top-k tokens)
and its tokenizer is read from the model directory the server reports (`root`);
llama.cpp sends an `id` with every token. Elsewhere ids are recovered from each
token's bytes with the configured `tokenizer`. A sample whose ids could not be had
is marked `ids_missing`; `Generation.token_ids_source` says where ids came from.
A server that sends ids for a tokenizer this machine cannot hash is refused before
the first request: ids without a tokenizer hash are useless to a KD trainer.
The API key comes from the environment variable the config names and is held only
by the HTTP client.
"""

from __future__ import annotations

import email.utils
import itertools
import json
import math
import os
import time
from pathlib import Path
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
CONNECTIONS_PER_CLIENT = 8  # per HTTP client (see OpenAITeacher.__init__); 8 cost ~5% less CPU than 16 at 256 in flight
VLLM_MAX_LOGPROBS = 20  # vLLM's default --max-logprobs


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
        self._token_index: TokenBytesIndex | None = None
        identity = TeacherIdentity("openai", config.model)
        if config.tokenizer:
            identity = self._use_tokenizer(identity, config.tokenizer)
        super().__init__(identity, **machinery)
        # httpx's pool scans every connection it holds for each request; with hundreds in
        # flight that scan is most of the client's CPU. So connections are spread over
        # small clients (CONNECTIONS_PER_CLIENT each) that requests take in turn.
        api_key = read_api_key(config)
        shards = max(1, math.ceil(self.slots.maximum / CONNECTIONS_PER_CLIENT))
        self._clients, https = zip(*(self._new_client(api_key, config.timeout_s) for _ in range(shards)))
        self._client = self._clients[0]
        self._next_http = itertools.cycle(https).__next__  # completions skip the SDK (see _generate_one)
        # Parsed once: httpx parses a URL string again for every request.
        self._completions_url = self._client.base_url.join("chat/completions")
        self._connected = False
        self.server_kind: str | None = None  # vllm | llamacpp | None (any other server), set by _prepare
        self._ask_for_ids = False
        self._set_cache_salt()

    def _use_tokenizer(self, identity: TeacherIdentity, name: str) -> TeacherIdentity:
        from factory.teachers.local_models import load_tokenizer
        from factory.teachers.tokenizers import tokenizer_hash

        tokenizer = load_tokenizer(name)
        self._token_index = TokenBytesIndex(tokenizer)
        return TeacherIdentity(identity.backend, identity.model, name, tokenizer_hash(tokenizer))

    def _set_cache_salt(self) -> None:
        # Another endpoint, or ids/logprobs asked for differently, must not be served old answers.
        self.cache_salt = f"{self.base_url}|ids={self._ask_for_ids}|logprobs={self.config.logprobs}"

    async def _prepare(self) -> None:
        """Once, before the first cache lookup: learn what the server is and how to get token ids.

        Runs before the cache so the identity (tokenizer hash) and the cache keys are the
        same on every run against the same server, whether or not anything is sent.
        """
        listing = await self._list_models()
        entry = next((m for m in listing if isinstance(m, dict) and m.get("id") == self.config.model), None)
        entry = entry or (listing[0] if len(listing) == 1 and isinstance(listing[0], dict) else {})
        owner = str(entry.get("owned_by") or "").lower()
        self.server_kind = owner if owner in ("vllm", "llamacpp") else None
        setting = self.config.return_token_ids
        self._ask_for_ids = setting is True or (setting is None and self.server_kind == "vllm")
        server_sends_ids = self._ask_for_ids or (setting is not False and self.server_kind == "llamacpp")
        if server_sends_ids and self.identity.tokenizer_hash is None:
            root = entry.get("root") or entry.get("id") or ""
            if self.server_kind == "vllm" and root and Path(str(root)).expanduser().is_dir():
                self.identity = self._use_tokenizer(self.identity, str(root))
            else:
                raise TeacherError(
                    f"teacher {self.config.model!r} at {self.base_url} sends token ids, but its tokenizer "
                    f"({root or 'unknown'}) is not on this machine: set teacher.tokenizer to a local copy "
                    "(directory or Hugging Face name) so stored ids carry a tokenizer hash, "
                    "or teacher.return_token_ids: false to store text and logprobs only"
                )
        self._set_cache_salt()

    def describe(self) -> str | None:
        if not self._prepared:
            return None
        server = {"vllm": "vLLM", "llamacpp": "llama.cpp"}.get(self.server_kind or "", "server")
        if self._ask_for_ids or self.server_kind == "llamacpp":
            ids = "token ids from the server"
        elif self._token_index is not None:
            ids = "token ids recovered from token bytes with the tokenizer"
        else:
            ids = "no token ids (set teacher.tokenizer to recover them): samples keep text and logprobs"
        hashed = f", tokenizer {self.identity.tokenizer} (hash {self.identity.tokenizer_hash})"
        return f"teacher: {server} at {self.base_url} serving {self.config.model!r}: {ids}" + (
            hashed if self.identity.tokenizer_hash else ""
        )

    async def _list_models(self) -> list:
        """The server's `GET /models` listing; [] when it has none (the completions still decide)."""
        try:
            listing = await self._client.get("/models", cast_to=object)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as error:
            raise self._classify(error) from error
        except openai.APIStatusError:
            self._connected = True
            return []
        except openai.APIConnectionError as error:
            if _is_connect_failure(error):
                raise ServerUnreachableError(
                    f"cannot reach the teacher server at {self.base_url}: connection failed"
                ) from error
            return []
        self._connected = True
        data = listing.get("data") if isinstance(listing, dict) else None
        return data if isinstance(data, list) else []

    def _new_client(self, api_key: str, timeout_s: float) -> tuple[openai.AsyncOpenAI, httpx.AsyncClient]:
        """An SDK client and the HTTP client it sends on (closed with it)."""
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        timeout = timeout_s + 5.0  # the machinery's own timeout fires first
        http = openai.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
        client = openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=api_key,
            max_retries=0,  # retries are ours: budget- and Retry-After-aware
            timeout=timeout,
            http_client=http,
        )
        # The headers the SDK would send with a completion, held by the HTTP client (the
        # only holder of the key) for the requests _generate_one sends through it directly.
        http.headers.update(
            {
                "Authorization": f"Bearer {api_key}",
                "Accept": "application/json",
                "User-Agent": client.user_agent,
                **({"OpenAI-Organization": client.organization} if client.organization else {}),
                **({"OpenAI-Project": client.project} if client.project else {}),
            }
        )
        return client, http

    async def _generate_one(self, request: TeacherRequest) -> Generation:
        try:
            # Sent on the SDK client's own HTTP client, not through the SDK: its request
            # pipeline (options copies, header merging, URL parsing, auth hooks, response
            # wrapping) cost ~0.3 ms of CPU per request, a quarter of the client's cost,
            # which caps throughput at high concurrency on a small machine. Failures become
            # the SDK's own errors, so `_classify` treats them exactly as before.
            response = await self._post(self._body(request))
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            raise self._classify(error) from error
        self._connected = True
        if not isinstance(response, dict) or not response.get("choices"):
            raise RetryableError("server answered without choices", maybe_billed=True)
        try:
            return self._to_generation(request, response)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise RetryableError(f"malformed answer ({type(error).__name__}: {error})", maybe_billed=True) from error

    async def _post(self, params: dict[str, Any]) -> Any:
        """POST /chat/completions; the decoded JSON answer. Raises what the SDK's `post`
        would: APITimeoutError, APIConnectionError, APIStatusError (status >= 400)."""
        http = self._next_http()
        sent = http.build_request("POST", self._completions_url, json=params)
        try:
            response = await http.send(sent)
        except Exception as error:  # noqa: BLE001 - mapped as the SDK maps it
            if isinstance(error, httpx.TimeoutException):
                raise openai.APITimeoutError(request=sent) from error
            raise openai.APIConnectionError(request=sent) from error
        if response.status_code >= 400:
            raise _status_error(response)
        content_type = response.headers.get("content-type", "*").split(";")[0]
        return response.json() if content_type.endswith("json") else response.text  # the SDK's rule

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
                params["top_logprobs"] = self._top_logprobs_to_ask(request.top_logprobs)
        if self._ask_for_ids:
            params["return_tokens_as_token_ids"] = True  # vLLM's extension
        return params

    def _top_logprobs_to_ask(self, k: int) -> int:
        """vLLM's server lists the sampled token first, then the best k-1 others: ask for one
        more (up to vLLM's default cap of 20) so the true top-k can be kept."""
        return min(k + 1, VLLM_MAX_LOGPROBS) if self.server_kind == "vllm" and k < VLLM_MAX_LOGPROBS else k

    def _classify(self, error: Exception) -> Exception:
        if isinstance(error, openai.APIStatusError):
            self._connected = True  # the server answered: a later connection failure is not "unreachable"
        where = f"{self.base_url} (model {self.config.model!r})"
        # By status code rather than the SDK's subclass (RateLimitError is 429, ...): `_post`
        # raises the plain APIStatusError.
        status = error.status_code if isinstance(error, openai.APIStatusError) else None
        if status == 429:
            retry_after = retry_after_seconds(error.response.headers)
            return RetryableError("429 rate limited", retry_after=retry_after, congestion=True)
        if status in (401, 403):
            return TeacherError(f"{where} rejected the API key from ${self.config.api_key_env} ({error.status_code})")
        if status == 404:
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
            sample, source = self._to_sample(choice, request.top_logprobs)
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

    def _to_sample(self, choice: dict, k: int) -> tuple[Sample, str | None]:
        text = (choice.get("message") or {}).get("content") or ""
        content = (choice.get("logprobs") or {}).get("content") or []
        sample = Sample(text=text, finish_reason=choice.get("finish_reason"))
        sample.logprobs = [float(entry["logprob"]) for entry in content]
        ids = [self._token_id(entry) for entry in content]
        complete = bool(ids) and all(token_id is not None for token_id in ids)
        for entry in content:
            pairs = [(self._token_id(alt), float(alt["logprob"])) for alt in entry.get("top_logprobs") or []]
            if complete:  # ids and logprobs stay pairs: drop an alternative whose id is unknown
                pairs = [(token_id, logprob) for token_id, logprob in pairs if token_id is not None]
            ranked = sorted(pairs, key=lambda pair: -pair[1])[:k]
            if complete:
                sample.top_ids.append([token_id for token_id, _ in ranked])  # type: ignore[misc]
            sample.top_logprobs.append([logprob for _, logprob in ranked])
        if not complete:  # no ids at all rather than misaligned ones; the logprobs still serve entropy
            sample.ids_missing = bool(text)
            return sample, None
        sample.token_ids = ids  # type: ignore[assignment]
        return sample, "server" if self._ask_for_ids or self.server_kind == "llamacpp" else "tokenizer"

    def _token_id(self, entry: dict) -> int | None:
        """A token's id: sent by the server (`token_id:N`, llama.cpp's `id`), else from its bytes."""
        if isinstance(entry.get("id"), int):
            return entry["id"]
        token = entry["token"]
        token_id = parse_token_id(token)
        if token_id is None and self._token_index is not None:
            token_id = self._token_index.lookup(token, entry.get("bytes"))
        return token_id

    async def close(self) -> None:
        for client in self._clients:
            await client.close()
        await super().close()


def _status_error(response: Any) -> openai.APIStatusError:
    """The SDK's error for an HTTP error answer, with the same message and body."""
    message, body = f"Error code: {response.status_code}", response.text.strip()
    try:
        body = json.loads(body)
    except ValueError:
        pass  # not JSON: the text is the body
    inner = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(inner, dict) and isinstance(inner.get("message"), str) and inner["message"]:
        message += f" - {inner['message']}"
    return openai.APIStatusError(message, response=response, body=inner)


def _server_message(error: Exception) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:200]
    return str(error)[:200]
