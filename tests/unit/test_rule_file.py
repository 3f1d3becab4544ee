"""The rule file (config/rules.yaml): validated at start-up with one sentence naming the rule
and the key; today's two rules are rules of the default file with today's results; the
legacy `rules.repeat_contact` / `rules.re_entry` settings keys still work."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import DEFAULT_RULES, ConfigError, RulesSettings, load_settings
from processors.model import Rules
from processors.rules import KnownEntryRule, RepeatRule, RuleFileError, legacy_rules, parse_rule_file

DEFAULT = yaml.safe_load(DEFAULT_RULES.read_text())


def problem(change: Any) -> str:
    data = copy.deepcopy(DEFAULT)
    change(data)
    with pytest.raises(RuleFileError) as e:
        parse_rule_file(data, "rules.yaml")
    return str(e.value)


def rule(data: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(r for r in data["rules"] if r["name"] == name)
    return found


@pytest.mark.parametrize(
    ("change", "sentence"),
    [
        (lambda d: rule(d, "failed_self_service").update(window="24 hours"),
         "rules.yaml: rule 'failed_self_service', key 'window': not a duration like 90m, 24h or 7d."),
        (lambda d: rule(d, "failed_self_service").update(windw="24h"),
         "rules.yaml: rule 'failed_self_service', key 'windw': not a key of this template."),
        (lambda d: rule(d, "passed_around").update(template="chains"),
         "rules.yaml: rule 'passed_around', key 'template': must be one of repeat, known_entry, sequence, chain."),
        (lambda d: rule(d, "repeat_contact").update(match={"chanel": "web"}),
         "rules.yaml: rule 'repeat_contact', key 'match': unknown touchpoint field 'chanel'"),
        (lambda d: rule(d, "re_entry").update(name="repeat_contact"),
         "rules.yaml: rule 'repeat_contact', key 'name': used by another rule."),
        (lambda d: rule(d, "repeat_contact").update(summary="{whom} called"),
         "rules.yaml: rule 'repeat_contact', key 'summary': unknown placeholder {whom}"),
        (lambda d: rule(d, "repeat_contact").update(cooldown="8d"),
         "rules.yaml: rule 'repeat_contact', key 'cooldown': must not be longer than the window."),
        (lambda d: rule(d, "abandoned_booking").update(key_optional=True),
         "rules.yaml: rule 'abandoned_booking', key 'key_optional': needs a key."),
        (lambda d: rule(d, "passed_around").pop("legs") and rule(d, "passed_around").pop("agents"),
         "rules.yaml: rule 'passed_around', key 'legs': give legs, agents or both."),
    ],
)  # fmt: skip
def test_a_mistake_is_one_sentence_naming_the_rule_and_the_key(change: Any, sentence: str) -> None:
    said = problem(change)
    assert said.startswith(sentence), said
    assert "\n" not in said


def test_an_invalid_rule_file_stops_start_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = copy.deepcopy(DEFAULT)
    rule(data, "repeat_contact")["threshold"] = "two"
    bad = tmp_path / "rules.yaml"
    bad.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("CEM_RULES__FILE", str(bad))
    with pytest.raises(ConfigError, match=r"rule 'repeat_contact', key 'threshold': Input should be a valid integer"):
        load_settings()
    monkeypatch.setenv("CEM_RULES__FILE", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="rules.file: cannot read the rule file"):
        load_settings()


def test_the_default_file_holds_todays_two_rules_with_todays_parameters() -> None:
    parsed = parse_rule_file(DEFAULT)
    by_name = {r.name: r for r in parsed.rules}
    for want in legacy_rules(7, 60, 50, 30, 3, 50):
        got = by_name[want.name]
        # the same rule, whatever the file says about it in words
        assert got.model_dump(exclude={"version", "description"}) == want.model_dump(exclude={"version", "description"})
    assert (parsed.contacts.window, parsed.contacts.transfer_grace) == ("7d", "15m")
    assert {"failed_self_service", "abandoned_booking", "passed_around"} <= set(by_name)


def test_legacy_settings_keys_override_the_rules_of_their_name() -> None:
    s = RulesSettings.model_validate(
        {"repeat_contact": {"window_days": 10, "transfer_grace_minutes": 5}, "re_entry": {"alert_threshold": 4}}
    )
    parsed = s.rule_file()
    rc = next(r for r in parsed.rules if r.name == "repeat_contact")
    re = next(r for r in parsed.rules if r.name == "re_entry")
    assert isinstance(rc, RepeatRule) and isinstance(re, KnownEntryRule)
    assert (rc.window, rc.cooldown, re.threshold, re.window) == ("10d", "60m", 4, "30d")
    rules = s.to_rules()
    assert (rules.repeat_contact.window_days, rules.repeat_contact.transfer_grace_minutes) == (10, 5)
    # unset, the file's values hold
    plain = RulesSettings().to_rules()
    assert (plain.repeat_contact.window_days, plain.repeat_contact.transfer_grace_minutes) == (7, 15)
    assert [d.name for d in plain.detectors][:2] == ["repeat_contact", "re_entry"]


def test_a_disabled_rule_is_not_run() -> None:
    data = copy.deepcopy(DEFAULT)
    rule(data, "passed_around")["enabled"] = False
    rules = Rules(friction=tuple(parse_rule_file(data).rules))
    assert "passed_around" not in [d.name for d in rules.detectors]


def test_the_contacts_window_is_whole_days() -> None:
    said = problem(lambda d: d["contacts"].update(window="36h"))
    assert said == "rules.yaml: key 'contacts.window': a whole number of days, like 7d."


def test_a_legacy_key_that_changes_the_rule_file_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="cem.settings"):
        RulesSettings.model_validate({"repeat_contact": {"window_days": 7, "alert_cooldown_minutes": 30}}).to_rules()
    said = [r.getMessage() for r in caplog.records]
    # window_days = 7 is what the file says: silent; the cooldown is not
    assert said == [
        "rules.repeat_contact.alert_cooldown_minutes (config/cem.yaml or CEM_RULES__...) overrides "
        "cooldown of rule 'repeat_contact': 30m instead of 60m"
    ]
