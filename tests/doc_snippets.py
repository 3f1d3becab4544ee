"""Code that the documentation gives to others, loaded from the page itself so that tests
run exactly what readers copy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SECURITY_DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
VERIFY_MARKER = "<!-- verify_cem_signature:"


def verify_cem_signature() -> Callable[..., bool]:
    """The webhook signature check of docs/security.md (the python block after its marker)."""
    text = SECURITY_DOC.read_text()
    after = text.split(VERIFY_MARKER, 1)[1]
    code = after.split("```python\n", 1)[1].split("\n```", 1)[0]
    namespace: dict[str, object] = {}
    exec(compile(code, str(SECURITY_DOC), "exec"), namespace)  # noqa: S102 (our own documentation)
    verify = namespace["verify_cem_signature"]
    assert callable(verify)
    return verify
