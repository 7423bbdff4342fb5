"""The embedder's thread tuner: its decisions from recorded costs (no timing assertions), and the
real MiniLM giving the same vectors whichever thread count the tuner picks."""

from __future__ import annotations

import numpy as np

from composer.routers.embed import _TUNE_CHUNK, Embedder, _ThreadTuner


def feed(t: _ThreadTuner, n_texts: int, cost: dict[int, float], calls: int) -> list[int]:
    """Run `calls` choose/record rounds where option k costs cost[k] seconds per character."""
    picked = []
    for _ in range(calls):
        k = t.choose(n_texts)
        picked.append(k)
        t.record(n_texts, k, cost[k] * (100 + 64 * n_texts), 100)
    return picked


def test_tuner_settles_on_the_cheaper_option_and_keeps_probing():
    t = _ThreadTuner(2)
    picked = feed(t, 1, {1: 2e-4, 2: 1e-4}, 64)  # idle machine: 2 threads cheaper
    assert picked[:4].count(1) == 2 and picked[:4].count(2) == 2  # each tried twice first
    assert picked[4:].count(2) >= 55 and 1 in picked[4:]  # then mostly 2, with probes of 1
    busy = feed(t, 1, {1: 2e-4, 2: 3e-3}, 200)  # the machine got busy: 2 threads 15x worse
    assert busy[-100:].count(1) >= 97  # switched, and probes the bad option rarely (1 in 64)


def test_single_texts_and_batches_are_tuned_apart():
    t = _ThreadTuner(2)
    feed(t, 1, {1: 1e-4, 2: 2e-4}, 40)
    feed(t, 64, {1: 2e-5, 2: 1e-5}, 40)
    s = t.stats()
    assert s["single"][1]["s_per_char"] < s["single"][2]["s_per_char"]
    assert s["batch"][2]["s_per_char"] < s["batch"][1]["s_per_char"]
    assert t.choose(1) == 1 or (t.calls["single"] + 1) % t.probe_every == 0


def test_one_cpu_means_no_tuning():
    t = _ThreadTuner(1)
    assert t.options == [1] and all(k == 1 for k in feed(t, 1, {1: 1e-4}, 10))


def test_tuned_and_fixed_threads_give_the_same_vectors(tmp_path):
    texts = [f"Question {i}: which gas do plants take in for photosynthesis" + "?" * (i % 7)
             for i in range(_TUNE_CHUNK + 9)]
    tuned = Embedder(cache=False)
    fixed = Embedder(cache=False, threads=1)
    a = tuned.encode(texts)  # more than one chunk: sorted by length, embedded chunk by chunk
    b = fixed.encode(texts)
    tuned._memory.clear()  # embed these again, one text per call (the "single" path)
    singles = np.stack([tuned.encode([t])[0] for t in texts[:6]])
    assert a.shape == b.shape == (len(texts), 384)
    assert np.abs(a - b).max() < 1e-5 and np.abs(singles - b[:6]).max() < 1e-5
    stats = tuned.thread_stats
    assert sum(v["calls"] for v in stats["batch"].values()) == 2  # two chunks were measured
    assert sum(v["calls"] for v in stats["single"].values()) == 6
    assert fixed.thread_stats == {}


def test_single_text_fast_path_matches_sentence_transformers():
    e = Embedder(cache=False, threads=1).load()
    assert e._fast is not None  # all-MiniLM-L6-v2 is transformer + mean pooling + normalise
    for text in ["hi", "What is 2+2?", "A long question " * 200]:  # the last is cut at 256 tokens
        ref = e._st.encode([text], convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
        assert np.abs(e._fast(text) - ref).max() < 1e-5
