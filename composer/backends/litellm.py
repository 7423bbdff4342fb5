"""A remote expert through any litellm provider (`openai/...`, `anthropic/...`, `hosted_vllm/...`).

The API key is read from the environment variable named by `api_key_env`, at call time, and never
logged. There is nothing to load: `load()` only checks that the key variable is set.
"""

from __future__ import annotations

import os

from composer.backends.base import Backend
from composer.backends.openai_chat import achat_call, chat_batch
from composer.errors import ExpertLoadError


class LiteLLMBackend(Backend):
    remote = True

    def _key(self) -> str | None:
        env = self.spec.api_key_env
        return os.environ.get(env) if env else None

    def _load(self) -> None:
        env = self.spec.api_key_env
        if env and not os.environ.get(env):
            raise ExpertLoadError(f"environment variable {env} (api_key_env) is not set", expert=self.name)

    def _unload(self) -> None:
        pass

    def _generate(self, queries, on_delta=None):
        return chat_batch(self, queries, on_delta, model=self.spec.model, api_base=self.spec.api_base,
                          api_key=self._key())

    async def acall(self, q, on_delta=None):
        if not self._loaded:
            self.load()
        return await achat_call(self, q, on_delta, model=self.spec.model, api_base=self.spec.api_base,
                                api_key=self._key())
