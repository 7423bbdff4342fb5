"""Context window and prices of remote experts from litellm's model map, where experts.yaml omits them.

An expert whose `context_length` or `price` is not written in experts.yaml would otherwise get the
schema defaults (2048 tokens, free): a `litellm` expert such as `openai/gpt-4o-mini` then refuses
`max_tokens: 4096` and looks free to every router. `with_model_info(spec)` fills what the file left
out from litellm's model map (read locally: LITELLM_LOCAL_MODEL_COST_MAP), and says where each
value came from. Values written in experts.yaml always win; local experts are returned unchanged.
"""

from __future__ import annotations

from functools import lru_cache

from composer.offline import import_litellm


@lru_cache(maxsize=256)
def lookup(model: str) -> dict | None:
    """litellm's entry for a provider model string (e.g. "openai/gpt-4o-mini"), or None."""
    litellm = import_litellm()
    candidates = [model]
    if "/" in model:
        candidates.append(model.split("/", 1)[1])
    for name in candidates:
        try:
            info = litellm.get_model_info(name)
        except Exception:  # noqa: BLE001 - litellm raises a bare Exception for unmapped models
            info = litellm.model_cost.get(name)
        if info:
            return dict(info)
    return None


def context_and_price(model: str) -> dict | None:
    """{"context_length", "input_per_1m", "output_per_1m", "max_output_tokens"} from the map."""
    info = lookup(model)
    if not info:
        return None
    ctx = info.get("max_input_tokens") or info.get("max_tokens")
    return {
        "context_length": int(ctx) if ctx else None,
        "max_output_tokens": int(info["max_output_tokens"]) if info.get("max_output_tokens") else None,
        "input_per_1m": float(info.get("input_cost_per_token") or 0.0) * 1e6,
        "output_per_1m": float(info.get("output_cost_per_token") or 0.0) * 1e6,
    }


def with_model_info(spec):
    """`spec` with context_length / price filled from litellm's map where experts.yaml omitted
    them (litellm experts only). Returns the same object when there is nothing to fill."""
    if spec.backend != "litellm":
        return spec
    missing = {"context_length", "price"} - spec.model_fields_set
    if not missing:
        return spec
    info = context_and_price(spec.model)
    if not info:
        return spec
    update = {}
    if "context_length" in missing and info["context_length"]:
        update["context_length"] = info["context_length"]
    if "price" in missing and (info["input_per_1m"] or info["output_per_1m"]):
        update["price"] = spec.price.model_copy(update={"input_per_1m": info["input_per_1m"],
                                                        "output_per_1m": info["output_per_1m"]})
    if not update:
        return spec
    new = spec.model_copy(update=update)
    # model_copy keeps model_fields_set; record what came from the map for `describe`.
    object.__setattr__(new, "__pydantic_fields_set__", set(spec.model_fields_set))
    return new


def describe(spec) -> dict:
    """Context and price of an expert as /v1/models/{id} shows them, with their source
    ("experts.yaml", "litellm model map" or "default"). Works on a spec already filled."""
    filled = with_model_info(spec)
    info = context_and_price(spec.model) if spec.backend == "litellm" else None

    def source(field: str, from_map: bool) -> str:
        if field in spec.model_fields_set:
            return "experts.yaml"
        return "litellm model map" if from_map else "default"

    ctx_from_map = bool(info and info["context_length"] == filled.context_length)
    price_from_map = bool(info and (info["input_per_1m"] or info["output_per_1m"])
                          and info["input_per_1m"] == filled.price.input_per_1m)
    return {
        "context_length": filled.context_length, "context_length_source": source("context_length", ctx_from_map),
        "price": {"input_per_1m": filled.price.input_per_1m, "output_per_1m": filled.price.output_per_1m,
                  "input_per_token": filled.price.input_per_1m / 1e6,
                  "output_per_token": filled.price.output_per_1m / 1e6, "currency": "USD",
                  "source": source("price", price_from_map)},
    }
