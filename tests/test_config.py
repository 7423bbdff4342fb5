"""experts.yaml parsing: the default registry is valid, and every kind of bad input names file,
line and field."""

from __future__ import annotations

import textwrap

import pytest

from composer.config import load_config, parse_config
from composer.errors import ConfigError

GOOD = textwrap.dedent("""\
    version: 1
    experts:
      - name: a
        backend: fake
        model: fake-a
      - name: b
        backend: fake
        model: fake-b
        fallbacks: [a]
    pipelines:
      - name: p
        experts: [a, b]
        k: 2
    """)


def write(tmp_path, text):
    p = tmp_path / "experts.yaml"
    p.write_text(text)
    return p


def test_default_registry_is_valid(default_config):
    cfg = load_config(default_config)
    names = [e.name for e in cfg.experts]
    assert "smollm2" in names and cfg.settings.default_expert == "smollm2"
    assert all(e.backend in ("llamacpp", "server", "litellm", "replay", "fake") for e in cfg.experts)


def test_good_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert [e.name for e in cfg.experts] == ["a", "b"]
    assert cfg.experts[1].fallbacks == ["a"]
    assert cfg.experts[0].generation.max_tokens == 256  # default filled in
    assert cfg.pipelines[0].k == 2


@pytest.mark.parametrize("mutate, line, field, words", [
    (lambda t: t.replace("    model: fake-a\n", "    model: fake-a\n    colour: red\n"),
     6, "experts[0].colour", "unknown key"),
    (lambda t: t.replace("model: fake-b", "model: fake-b\n    context_length: lots"),
     9, "experts[1].context_length", "valid integer"),
    (lambda t: t.replace("name: b", "name: a"), 6, "experts[1].name", "duplicate expert name"),
    (lambda t: t.replace("fallbacks: [a]", "fallbacks: [zz]"), 9, "experts[1].fallbacks[0]", "unknown expert 'zz'"),
    (lambda t: t.replace("experts: [a, b]", "experts: [a, ghost]"), 12, "pipelines[0].experts[1]", "unknown expert 'ghost'"),
    (lambda t: t.replace("backend: fake\n    model: fake-a", "backend: gpu\n    model: fake-a"),
     4, "experts[0].backend", "Input should be"),
    (lambda t: t.replace("    model: fake-a\n", ""), 3, "experts[0].model", "required field is missing"),
])
def test_bad_config_names_file_line_field(tmp_path, mutate, line, field, words):
    p = write(tmp_path, mutate(GOOD))
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    err = ei.value
    assert err.file == str(p)
    assert err.line == line, str(err)
    assert err.field == field
    assert words in str(err)
    assert str(p) in str(err) and f":{line}" in str(err)


def test_missing_model_file_is_reported(tmp_path):
    text = GOOD.replace("backend: fake\n    model: fake-a", "backend: llamacpp\n    model: models/nope.gguf")
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert ei.value.field == "experts[0].model" and ei.value.line == 5
    assert "nope.gguf" in str(ei.value)


def test_unknown_embedded_model(tmp_path):
    p = write(tmp_path, GOOD.replace("backend: fake\n    model: fake-a",
                                     "backend: llamacpp\n    model: embedded:nothing"))
    with pytest.raises(ConfigError, match="unknown embedded model 'nothing'"):
        load_config(p)


def test_invalid_yaml_and_top_level(tmp_path):
    with pytest.raises(ConfigError) as ei:
        parse_config("experts: [\n  {name: a", source="x.yaml")
    assert ei.value.file == "x.yaml" and ei.value.line is not None
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config("- a\n- b\n", source="x.yaml")


def test_secrets_are_refused_in_yaml(tmp_path):
    p = write(tmp_path, GOOD.replace("model: fake-a", "model: fake-a\n    options: {api_key: sk-123}"))
    with pytest.raises(ConfigError, match="environment variable") as ei:
        load_config(p)
    assert ei.value.field == "experts[0].options"


def test_yaml_is_loaded_safely(tmp_path):
    evil = GOOD.replace("model: fake-a", "model: !!python/object/apply:os.system ['echo pwned']")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(write(tmp_path, evil))


def test_file_not_found(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_reliability_settings_reach_the_core(tmp_path):
    from composer.core import Composer

    p = write(tmp_path, GOOD.replace("version: 1\n", "version: 1\nsettings:\n  reliability: {max_retries: 5, cooldown_s: 1.5}\n"))
    c = Composer.from_yaml(p)
    assert c.reliability.max_retries == 5 and c.reliability.cooldown_s == 1.5
    assert c.reliability.cooldown_after == 3  # default kept
    bad = write(tmp_path, GOOD.replace("version: 1\n", "version: 1\nsettings:\n  reliability: {retries: 5}\n"))
    with pytest.raises(ConfigError) as ei:
        load_config(bad)
    assert ei.value.field == "settings.reliability.retries" and ei.value.line == 3
