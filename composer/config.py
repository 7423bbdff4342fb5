"""experts.yaml schema and the one place it is parsed.

`load_config(path)` reads the file with `yaml.safe_load` semantics (a SafeLoader that also keeps
line numbers), validates it into pydantic models with `extra="forbid"`, checks cross-references,
and raises `ConfigError` naming file, line and field on any problem.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from composer.errors import ConfigError

BackendKind = Literal["llamacpp", "server", "litellm", "replay", "fake"]
LOCAL_BACKENDS = ("llamacpp", "server")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Generation(_Strict):
    max_tokens: int = Field(256, ge=1, description="Default maximum new tokens per answer.")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="Default sampling temperature.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Default nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Default stop strings.")
    seed: int | None = Field(None, description="Default sampling seed (None: backend default).")


class Price(_Strict):
    input_per_1m: float = Field(0.0, ge=0.0, description="Price in USD per 1M prompt tokens.")
    output_per_1m: float = Field(0.0, ge=0.0, description="Price in USD per 1M completion tokens.")

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6


class ExpertSpec(_Strict):
    """One expert LLM. See the README's experts.yaml reference for every field."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.:/-]+$",
                      description="Unique name; used by routers, pipelines, the CLI and the API.")
    backend: BackendKind = Field(..., description="How the expert runs.")
    model: str = Field(..., min_length=1, description=(
        "A GGUF path, an embedded model ('embedded:smollm2-135m-instruct'), a provider model "
        "string for litellm ('openai/gpt-4o-mini'), an outcome file for replay, or a label for fake."))
    chat_format: str | None = Field(None, description=(
        "llama.cpp chat format; None uses the GGUF's own template. 'completion' sends a plain "
        "prompt (for base models without a chat template)."))
    system_prompt: str | None = Field(None, description=(
        "System message sent first when a request brings none (chat experts)."))
    generation: Generation = Field(default_factory=Generation, description="Generation defaults.")
    context_length: int = Field(2048, ge=16, description="Context window in tokens.")
    footprint_bytes: int | None = Field(None, ge=0, description=(
        "Memory needed while loaded; derived from the model file size when omitted."))
    price: Price = Field(default_factory=Price, description="Price per 1M tokens (USD).")
    skills: list[str] = Field(default_factory=list, description="Skills/tags for symbolic routing.")
    concurrency: int | None = Field(None, ge=1, description=(
        "Maximum concurrent calls to this expert (default: 64 for remote litellm/server experts, "
        "which run asynchronously; 1 for in-process ones)."))
    timeout_s: float = Field(120.0, gt=0, description="Per-call timeout in seconds.")
    api_base: str | None = Field(None, description="Base URL for litellm/server experts.")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "Name of the environment variable holding the API key. Keys never go in YAML."))
    fallbacks: list[str] = Field(default_factory=list, description=(
        "Experts to try, in order, when this one fails."))
    options: dict[str, Any] = Field(default_factory=dict, description=(
        "Backend-specific options (llamacpp: n_threads, n_batch; server: command, port, "
        "ready_timeout_s; fake: load_s, gen_s, fail_rate, seed; replay: expert)."))

    @field_validator("options")
    @classmethod
    def _no_secrets(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key.lower() in {"api_key", "key", "token", "secret", "password"}:
                raise ValueError(f"'{key}' looks like a secret; put it in an environment variable "
                                 "and name that variable in api_key_env")
        return v

    @property
    def is_remote(self) -> bool:
        """Remote experts cost no load and hold no local memory."""
        return self.backend == "litellm" or (self.backend == "server" and "command" not in self.options
                                             and self.api_base is not None)


class SpecialistSpec(_Strict):
    """A classical mixture-of-experts model (Mowst on graphs, FEAMOE on tables)."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.:/-]+$", description="Unique name.")
    kind: Literal["mowst", "feamoe"] = Field(..., description="Which specialist model.")
    task: str = Field(..., min_length=1, description=(
        "Task type a request carries to reach it, e.g. 'node_classification' or 'credit'."))
    artifact: str | None = Field(None, description="Path of the trained artifact (from `specialist train`).")
    dataset: str | None = Field(None, description="Dataset it serves (e.g. 'cora', 'adult').")
    options: dict[str, Any] = Field(default_factory=dict, description="Model hyper-parameters.")


class AggregatorSpec(_Strict):
    kind: Literal["none", "moa", "self_moa", "self_moa_seq", "vote"] = Field(
        "none", description="How candidates become one answer.")
    expert: str | None = Field(None, description="Expert that writes the aggregated answer.")
    params: dict[str, Any] = Field(default_factory=dict, description=(
        "Aggregator parameters (layers, samples, window, temperature, ...)."))


class PipelineSpec(_Strict):
    """A named composition: a router (or fixed experts), k, and an aggregator."""

    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.:/-]+$", description="Unique name.")
    router: str | None = Field(None, description=(
        "Router name from the ROUTERS registry, or a path to a saved router. None: fixed experts."))
    router_path: str | None = Field(None, description="Saved router state (from `router train`).")
    experts: list[str] = Field(default_factory=list, description="Fixed experts (or the router's pool).")
    k: int = Field(1, ge=1, description="Experts per query.")
    aggregator: AggregatorSpec = Field(default_factory=AggregatorSpec, description="Aggregation.")
    fallbacks: list[str] = Field(default_factory=list, description="Pipelines/experts tried on failure.")
    params: dict[str, Any] = Field(default_factory=dict, description="Router parameters.")
    profile: Literal["trained", "declared_skills"] = Field("trained", description=(
        "Where the router's expert profiles come from: 'trained' (router_path, from `composer "
        "router train`) or 'declared_skills' (fitted when first used on the pool experts' "
        "`skills` in this file: symbolic routing with no outcome data)."))


class ReliabilitySettings(_Strict):
    """The failure policy every stage runs under (composer/reliability.py)."""

    max_retries: int = Field(2, ge=0, le=10, description="Retries of a retryable error (with backoff).")
    backoff_s: float = Field(0.05, ge=0, description="First backoff; doubles each retry (with jitter).")
    backoff_max_s: float = Field(2.0, ge=0, description="Longest backoff.")
    cooldown_after: int = Field(3, ge=1, description="Consecutive failures that send an expert to cool down.")
    cooldown_s: float = Field(10.0, ge=0, description="Seconds an expert cools down, then comes back by itself.")
    cooldown_rate: float = Field(0.6, ge=0, le=1, description=(
        "Share of the expert's recent calls that must have failed too (keeps flaky experts in service)."))
    window: int = Field(20, ge=1, description="Recent calls the failure share is computed over.")
    max_fallbacks: int = Field(3, ge=0, description="Most fallback hops a request may take.")


class Settings(_Strict):
    default_expert: str | None = Field(None, description="Expert used when a request names none.")
    default_pipeline: str | None = Field(None, description=(
        "Pipeline `composer ask` uses when neither --expert nor --pipeline is given."))
    memory_budget_bytes: int | None = Field(None, ge=0, description=(
        "Memory the scheduler may fill with loaded experts; default: free GPU memory or available RAM "
        "(with executor: ray on a cluster, the memory its nodes offer to Ray)."))
    executor: Literal["local", "ray"] = Field("local", description="Where experts run.")
    ray_address: str | None = Field(None, description="Ray cluster address; None starts local Ray.")
    reliability: ReliabilitySettings = Field(default_factory=ReliabilitySettings, description=(
        "Retries, backoff, cooldowns and fallback hops."))


class RegistryConfig(_Strict):
    version: Literal[1] = Field(1, description="Schema version.")
    settings: Settings = Field(default_factory=Settings, description="Global settings.")
    experts: list[ExpertSpec] = Field(..., min_length=1, description="Expert LLMs.")
    specialists: list[SpecialistSpec] = Field(default_factory=list, description="Specialists.")
    pipelines: list[PipelineSpec] = Field(default_factory=list, description="Pipelines.")

    @model_validator(mode="after")
    def _unique_and_known(self) -> "RegistryConfig":
        # Cross-reference errors carry a pydantic-style location so line lookup works.
        seen: dict[str, int] = {}
        for i, e in enumerate(self.experts):
            if e.name in seen:
                raise _RefError(("experts", i, "name"),
                                f"duplicate expert name '{e.name}' (first at experts[{seen[e.name]}])")
            seen[e.name] = i
        names = set(seen)
        for i, e in enumerate(self.experts):
            for j, fb in enumerate(e.fallbacks):
                if fb not in names:
                    raise _RefError(("experts", i, "fallbacks", j), f"unknown expert '{fb}'")
                if fb == e.name:
                    raise _RefError(("experts", i, "fallbacks", j), "an expert cannot fall back to itself")
        sp_seen: set[str] = set()
        for i, s in enumerate(self.specialists):
            if s.name in sp_seen or s.name in names:
                raise _RefError(("specialists", i, "name"), f"duplicate name '{s.name}'")
            sp_seen.add(s.name)
        p_seen: set[str] = set()
        for i, p in enumerate(self.pipelines):
            if p.name in p_seen or p.name in names:
                raise _RefError(("pipelines", i, "name"), f"duplicate name '{p.name}'")
            p_seen.add(p.name)
            for j, x in enumerate(p.experts):
                if x not in names:
                    raise _RefError(("pipelines", i, "experts", j), f"unknown expert '{x}'")
            from composer.aggregation import aggregator_class, unknown_params  # noqa: PLC0415 - light modules

            for key in unknown_params(p.aggregator.kind, p.aggregator.params):
                known = ", ".join(sorted(aggregator_class(p.aggregator.kind).PARAMS)) or "(none)"
                raise _RefError(("pipelines", i, "aggregator", "params", key),
                                f"unknown parameter '{key}' for aggregator '{p.aggregator.kind}'; known: {known}")
            if p.aggregator.expert is not None and p.aggregator.expert not in names:
                raise _RefError(("pipelines", i, "aggregator", "expert"),
                                f"unknown expert '{p.aggregator.expert}'")
            if p.router is None and not p.experts:
                raise _RefError(("pipelines", i, "experts"), "a pipeline without a router needs experts")
            if p.profile == "declared_skills":
                if p.router is None or p.router_path is not None:
                    raise _RefError(("pipelines", i, "profile"),
                                    "'declared_skills' needs a router name and no router_path")
                if len(p.experts) < 2:
                    raise _RefError(("pipelines", i, "experts"),
                                    "'declared_skills' routes among at least 2 experts")
                for j, x in enumerate(p.experts):
                    if not self.experts[seen[x]].skills:
                        raise _RefError(("pipelines", i, "experts", j),
                                        f"expert '{x}' declares no skills to route on")
        for i, p in enumerate(self.pipelines):
            for j, fb in enumerate(p.fallbacks):
                if fb not in names and fb not in p_seen:
                    raise _RefError(("pipelines", i, "fallbacks", j), f"unknown pipeline or expert '{fb}'")
        d = self.settings.default_expert
        if d is not None and d not in names:
            raise _RefError(("settings", "default_expert"), f"unknown expert '{d}'")
        dp = self.settings.default_pipeline
        if dp is not None and dp not in p_seen:
            raise _RefError(("settings", "default_pipeline"), f"unknown pipeline '{dp}'")
        return self


class _RefError(ValueError):
    def __init__(self, loc: tuple, message: str):
        self.loc = loc
        super().__init__(message)


# ---------------------------------------------------------------------------------------------
# Loading with line numbers


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that records where each mapping key and sequence item starts."""


def _compose_lines(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_LineLoader)


def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the YAML node at a pydantic error location (best effort, deepest match)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if k.value == part:
                    line, node = k.start_mark.line + 1, v
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _loc_str(loc: tuple) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _clean_loc(loc: tuple) -> tuple:
    # pydantic puts discriminator/literal tags in locations; keep only real path parts.
    return tuple(p for p in loc if isinstance(p, int) or not str(p).startswith(("function-", "literal[")))


def parse_config(text: str, source: str = "<string>", base_dir: Path | None = None,
                 check_files: bool = True) -> "RegistryConfig":
    """Validate YAML text into a RegistryConfig. Raises ConfigError naming source, line, field."""
    try:
        data = yaml.load(text, Loader=_LineLoader)  # a SafeLoader subclass: safe_load semantics
        root = _compose_lines(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        raise ConfigError(f"invalid YAML: {exc.problem}", file=source,
                          line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping with an 'experts' list", file=source, line=1)
    try:
        cfg = RegistryConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        loc = ctx_err.loc if isinstance(ctx_err, _RefError) else _clean_loc(tuple(err["loc"]))
        msg = str(ctx_err) if isinstance(ctx_err, _RefError) else err["msg"]
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{loc[-1]}'"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif "input" in err and err["type"] not in ("value_error",):
            msg = f"{msg} (got {err['input']!r})"
        more = f" (and {len(exc.errors()) - 1} more problem(s))" if len(exc.errors()) > 1 else ""
        raise ConfigError(msg + more, file=source, line=_line_of(root, loc),
                          field=_loc_str(loc) or None) from None
    if check_files:
        _check_model_files(cfg, root, source, base_dir or Path.cwd())
    return cfg


def _check_model_files(cfg: RegistryConfig, root: yaml.Node | None, source: str, base_dir: Path) -> None:
    from composer.models import ModelNotFoundError, resolve_model_path  # local: keep import light

    for i, e in enumerate(cfg.experts):
        if e.backend not in ("llamacpp", "server", "replay"):
            continue
        if e.backend == "server" and "command" not in e.options and e.api_base:
            continue  # an already-running server we only talk to
        try:
            resolve_model_path(e.model, base_dir=base_dir, must_exist=True, ensure=False)
        except ModelNotFoundError as exc:
            loc = ("experts", i, "model")
            raise ConfigError(str(exc), file=source, line=_line_of(root, loc), field=_loc_str(loc)) from None


def load_config(path: str | Path, check_files: bool = True) -> RegistryConfig:
    """Read and validate an experts.yaml file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", file=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", file=str(p)) from None
    return parse_config(text, source=str(p), base_dir=p.resolve().parent, check_files=check_files)


# ---------------------------------------------------------------------------------------------
# Which registry a command uses

CONFIG_ENV = "COMPOSER_CONFIG"


def packaged_registry() -> Path:
    """The default registry shipped inside the package (a copy of the repository's experts.yaml)."""
    return Path(__file__).with_name("experts.yaml")


def resolve_config_path(explicit: str | Path | None = None) -> tuple[Path, str]:
    """(path, where it came from): `explicit` (--config), else $COMPOSER_CONFIG, else
    ./experts.yaml, else the packaged default. A named file that does not exist is a ConfigError."""
    if explicit is not None:
        return Path(explicit), "--config"
    env = os.environ.get(CONFIG_ENV)
    if env:
        if not Path(env).is_file():
            raise ConfigError(f"${CONFIG_ENV} names a file that does not exist", file=env)
        return Path(env), f"${CONFIG_ENV}"
    local = Path("experts.yaml")
    if local.is_file():
        return local, "./experts.yaml"
    return packaged_registry(), "packaged default"
