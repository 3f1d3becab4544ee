"""What the settings of every component share: strict sections, and errors that name the
key and never quote a value that may be secret. Each component owns its settings model (the
ClickHouse sink `sinks.clickhouse.settings`, alert delivery `sinks.delivery.config`); the
worker's `pipeline.settings.Settings` composes them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class Section(BaseModel):
    """A settings section: unknown keys are errors, values never change after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the config."""


def yaml_error(path: Path, e: yaml.YAMLError) -> ConfigError:
    """What is wrong with a YAML file and where, without the lines around it: PyYAML's own
    message quotes the offending line, which may hold a password."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        what = "; ".join(x for x in (e.context, e.problem) if x)
        return ConfigError(f"{path}{where}: not valid YAML: {what or 'cannot be parsed'}")
    return ConfigError(f"{path}: not valid YAML")


SECRET_LOOKING = re.compile(r"pass|pwd|secr|token|key|cred|auth|salt|private|cert|sign|url|uri|dsn|hook", re.I)


def _may_be_secret(err: Any) -> bool:
    """An unknown key is often a misspelt one (`pasword`, `fingerprint_secrt`), so its value
    may be secret whatever its name; so may any value under a secret-looking key."""
    if err["type"] == "extra_forbidden":
        return True
    if err["loc"] and str(err["loc"][-1]).endswith("_env"):
        return False  # it names an environment variable: the name is not the secret, and the error must say it
    return any(SECRET_LOOKING.search(str(part)) for part in err["loc"])


def _shown_input(err: Any) -> str:
    """' (got <value>)', or '' for a value that may be secret, or that is or stands for a
    section or list (which may hold one)."""
    value = err.get("input")
    if err["type"] in ("missing", "model_type", "model_attributes_type", "dict_type", "list_type"):
        return ""
    if _may_be_secret(err) or not isinstance(value, str | int | float):
        return ""
    text = repr(value)
    return f" (got {text})" if len(text) <= 80 else ""


def describe_errors(e: ValidationError, title: str = "invalid configuration") -> ConfigError:
    """One line per problem, each naming the dotted key, for the person who wrote the config.
    Values are quoted only where they cannot be secret (`_shown_input`)."""
    problems = []
    for err in e.errors(include_url=False):
        name, msg = ".".join(str(p) for p in err["loc"]), err["msg"]
        got = _shown_input(err)
        value = err.get("input")
        if _may_be_secret(err) and isinstance(value, str) and value and value in msg:  # a message quoting it
            msg = msg.replace(value, "...")
        if msg.startswith("Value error, "):
            msg, got = msg.removeprefix("Value error, "), ""
            if not name:  # validators of the whole settings word their errors "<key>: <why>"
                name, _, msg = msg.partition(": ")
        problems.append(f"  {name}: {msg}{got}")
    return ConfigError(f"{title}:\n" + "\n".join(problems))
