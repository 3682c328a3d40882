"""The README's CLI reference is what `--help` says, for every command."""

from __future__ import annotations

from monitor import cli_docs


def test_readme_generated_sections_are_in_sync():
    text = cli_docs.README.read_text()
    for name in cli_docs.SECTIONS:
        begin, end = cli_docs.markers(name)
        assert begin in text and end in text, name
    assert cli_docs.render(text) == text, "run: python -m monitor.cli_docs"


def test_every_default_rule_has_a_runbook_in_the_readme():
    from alerts.rules import load_rules

    text = cli_docs.README.read_text()
    for rule in load_rules():
        assert rule.annotations.get("runbook"), rule.name
        assert f"**{rule.name}.**" in text


def test_every_command_is_documented():
    ref = cli_docs.reference()
    for name in ("db upgrade", "evaluate", "baseline pin", "deploy mark", "run", "rollback-check", "explain",
                 "dashboards export", "demo", "maintain"):
        assert f"### `attnmon {name}`" in ref


def test_readme_configuration_reference_is_every_key_with_its_default():
    import json
    import re

    import yaml

    from monitor.config import Config

    text = cli_docs.README.read_text()
    block = re.search(r"<!-- config-reference -->\n```yaml\n(.*?)```", text, re.S).group(1)
    documented = yaml.safe_load(block)
    defaults = json.loads(Config().model_dump_json(by_alias=True))

    def keys(d, prefix=""):
        out = set()
        for k, v in d.items():
            out.add(prefix + k)
            if isinstance(v, dict) and v:
                out |= keys(v, prefix + k + ".")
        return out

    assert keys(documented) == keys(defaults)
    assert documented == defaults  # every default as the code has it
