"""What must never reach a log line: credentials always, prompts unless the user opted in."""

from __future__ import annotations

import re

# API keys (sk-..., hf_..., AWS access key ids), bearer tokens and key=value pairs.
_SECRETISH = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|hf_[A-Za-z0-9]{8,}|AKIA[0-9A-Z]{16}|Bearer\s+\S+"
                        r"|(?:api[_-]?key|authorization|token|secret|password)[\"']?\s*[=:]\s*[\"']?[^\s\"',}]+)", re.I)

# Event/log fields that carry what a user typed or a model wrote.
PROMPT_FIELDS = frozenset({"prompt", "prompts", "text", "texts", "messages", "content", "input", "question",
                           "reply", "answer", "completion", "system_prompt"})
# Fields that are credentials by name: dropped always.
SECRET_FIELDS = frozenset({"api_key", "key", "keys", "authorization", "token", "secret", "password",
                           "api_keys", "key_hashes"})


def scrub(text: str) -> str:
    """`text` with anything that looks like a credential replaced by [redacted]."""
    return _SECRETISH.sub("[redacted]", text or "")


def clean_fields(fields: dict, log_prompts: bool) -> dict:
    """A copy of `fields` without credentials (always) and prompts (unless `log_prompts`);
    string values are scrubbed of anything that looks like a key."""
    out = {}
    for k, v in fields.items():
        lk = k.lower()
        if lk in SECRET_FIELDS:
            continue
        if lk in PROMPT_FIELDS and not log_prompts:
            out[k] = "[prompt withheld; --log-prompts shows it]" if v else v
            continue
        if isinstance(v, str):
            v = scrub(v)
        elif isinstance(v, dict):
            v = clean_fields(v, log_prompts)
        elif isinstance(v, (list, tuple)):
            v = [scrub(x) if isinstance(x, str) else x for x in v]
        out[k] = v
    return out
