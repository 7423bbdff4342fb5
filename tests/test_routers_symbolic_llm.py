"""Symbolic-MoE with skills written by a real local LLM (SmolLM2-135M through the llamacpp backend)."""

from __future__ import annotations

from routers_helpers import embedder, multitask  # noqa: F401 - fixture

from composer.routers import Router, make_router


def test_llm_skills_are_mapped_onto_the_vocabulary(embedder, tmp_path):
    train = multitask("train", {"gsm8k": 3, "humaneval": 3})
    r = make_router("symbolic", skills="llm", k=1, max_llm_queries=2).use_embedder(embedder).fit(train)
    assert r.profile_.shape == (len(r.vocab_), len(r.experts_))
    assert r._backend.is_loaded
    d = r.route(["Write a Python function that reverses a string."])[0]
    skills = d.reason.split("skills: ", 1)[1].split(";")[0].split(", ")
    assert skills and set(skills) <= set(r.vocab_)
    r.save(tmp_path / "sym")
    back = Router.load(tmp_path / "sym").use_embedder(embedder)
    assert back.skills == "llm" and back.vocab_ == r.vocab_
    r._backend.unload()
