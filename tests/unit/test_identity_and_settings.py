"""Identity resolution order and privacy; settings precedence and error naming."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import ConfigError, load_settings
from processors.identity import fingerprint, profile_fingerprints, resolve
from schemas.touchpoints import Identifiers

SECRET = b"k"
INDEX = {
    fingerprint("loyalty_id", "TP-1", SECRET): "C-loyal",
    fingerprint("email", "ana@example.com", SECRET): "C-email",
    fingerprint("phone", "+351 912 345 678", SECRET): "C-phone",
}


def test_customer_id_wins_and_links_the_anonymous_id() -> None:
    r = resolve("C-9", Identifiers(email="ana@example.com", anonymous_id="a1"), INDEX.get, SECRET)
    assert (r.customer_id, r.resolved_by) == ("C-9", "customer_id")
    assert r.link_anonymous == fingerprint("anonymous_id", "a1", SECRET)


def test_lookup_order_loyalty_then_email_then_phone() -> None:
    both = Identifiers(loyalty_id="TP-1", email="ana@example.com", phone="912345678")
    assert resolve(None, both, INDEX.get, SECRET).resolved_by == "loyalty_id"
    r = resolve(None, Identifiers(email="  ANA@Example.COM ", phone="+351912345678"), INDEX.get, SECRET)
    assert (r.customer_id, r.resolved_by) == ("C-email", "email")
    r = resolve(None, Identifiers(phone="(351) 912-345-678", loyalty_id="TP-unknown"), INDEX.get, SECRET)
    assert (r.customer_id, r.resolved_by) == ("C-phone", "phone")


def test_anonymous_then_linked_after_a_login() -> None:
    index = dict(INDEX)
    r = resolve(None, Identifiers(anonymous_id="a7"), index.get, SECRET)
    anon = f"anon:{fingerprint('anonymous_id', 'a7', SECRET)[:16]}"  # keyed: never the raw value
    assert (r.customer_id, r.resolved_by) == (anon, "anonymous")
    login = resolve(None, Identifiers(anonymous_id="a7", email="ana@example.com"), index.get, SECRET)
    assert login.link_anonymous is not None
    index[login.link_anonymous] = login.customer_id
    r = resolve(None, Identifiers(anonymous_id="a7"), index.get, SECRET)
    assert (r.customer_id, r.resolved_by) == ("C-email", "anonymous_id")


def test_unresolved_keys_never_carry_raw_values() -> None:
    r = resolve(None, Identifiers(email="who@example.com"), INDEX.get, SECRET)
    assert r.resolved_by == "unresolved" and "who" not in r.customer_id and "@" not in r.customer_id


def test_fingerprints_are_salted_and_normalized() -> None:
    assert fingerprint("email", "A@B.C", b"x") == fingerprint("email", " a@b.c", b"x")
    assert fingerprint("email", "a@b.c", b"x") != fingerprint("email", "a@b.c", b"y")
    assert fingerprint("email", "1", b"x") != fingerprint("phone", "1", b"x")
    assert len(profile_fingerprints("a@b.c", "", "L1", b"x")) == 2


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cem.yaml"
    cfg.write_text("kafka:\n  partitions: 3\n  topics:\n    web: my.web\nrules:\n  vip_tiers: [Gold]\n")
    monkeypatch.setenv("CEM_CONFIG", str(cfg))
    s = load_settings()
    assert (s.kafka.partitions, s.kafka.topics.web, s.rules.vip_tiers) == (3, "my.web", ["gold"])
    assert s.kafka.topics.callcenter == "cem.touchpoints.callcenter"  # defaults fill the rest
    monkeypatch.setenv("CEM_KAFKA__PARTITIONS", "12")
    assert load_settings().kafka.partitions == 12


def test_bad_values_are_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "cem.yaml"
    cfg.write_text("kafka:\n  partitions: 0\nrules:\n  re_entry:\n    window_dayz: 3\n")
    monkeypatch.setenv("CEM_CONFIG", str(cfg))
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert "kafka.partitions" in str(e.value) and "rules.re_entry.window_dayz" in str(e.value)


def test_missing_config_file_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEM_CONFIG", "/nonexistent/cem.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_settings()


def test_secrets_are_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEM_CLICKHOUSE__PASSWORD", "hunter2")
    monkeypatch.setenv("CEM_PRIVACY__FINGERPRINT_SECRET", "pepper")
    s = load_settings()
    assert s.clickhouse.password.get_secret_value() == "hunter2"
    assert "hunter2" not in str(s.redacted()) and "pepper" not in str(s.redacted()) and "pepper" not in repr(s)


def test_shipped_config_equals_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.settings import DEFAULT_CONFIG, Settings

    monkeypatch.setenv("CEM_CONFIG", str(DEFAULT_CONFIG))
    assert load_settings() == Settings.model_construct()  # the YAML documents the defaults, no surprises


def test_the_index_keeps_its_own_writes_over_older_records_read_after_them(tmp_path: Path) -> None:
    """A worker resolves with its own writes at once; records of the same fingerprint that
    it reads from the topic before its own write comes back are older, and change nothing."""
    from rocksdict import WriteBatch

    from pipeline.engine.identity_index import IdentityIndex
    from pipeline.engine.state_store import Disk
    from pipeline.settings import StateSettings

    index = IdentityIndex({}, "identity", Disk(tmp_path, StateSettings(), b"k"), cache_entries=10, resume_hours=1)
    index._open()  # noqa: SLF001 - what the follower does first

    def read(fp: str, owner: str | None) -> None:  # the follower's path, driven by hand
        batch = WriteBatch(raw_mode=True)
        index._read(batch, fp, owner)  # noqa: SLF001
        assert index.db is not None
        index.db.write(batch)

    read("fp", "C-old")
    assert index.get("fp") == "C-old" and index.owned_by("C-old") == {"fp"}
    index.apply("fp", "C-new")  # this worker's write, on its way to the topic
    read("fp", None)  # an older removal, read after the write
    read("fp", "C-other")  # an older owner
    assert index.get("fp") == "C-new" and index.owned_by("C-new") == {"fp"}
    read("fp", "C-new")  # the write comes back
    read("fp", "C-later")  # a newer record of another worker's
    assert index.get("fp") == "C-later"
    assert index.owned_by("C-later") == {"fp"} and index.owned_by("C-new") == set() == index.owned_by("C-old")
    read("fp", None)
    assert index.get("fp") is None and index.owned_by("C-later") == set()


def test_an_anonymous_id_never_becomes_a_customer_id_raw() -> None:
    """A producer that puts an email in `anonymous_id` must not send it to ClickHouse."""
    r = resolve(None, Identifiers(anonymous_id="ana@example.com"), {}.get, SECRET)
    assert r.customer_id.startswith("anon:") and "ana" not in r.customer_id and "@" not in r.customer_id
