"""Every example in schemas/examples validates against its model; tolerant vs strict models."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from processors.model import Touch
from schemas.alert import FrictionAlert
from schemas.erasure import ErasureReceipt
from schemas.internal import ENVELOPE, EraseEnvelope, PackEnvelope, ProfileEnvelope
from schemas.profile import ProfileSnapshot
from schemas.touchpoints import BookingEvent, ContactEvent, WebEvent

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
MODELS = {
    "web": WebEvent,
    "callcenter": ContactEvent,
    "booking": BookingEvent,
    "crm": ProfileSnapshot,
    "friction_alert": FrictionAlert,
    "erasure_receipt": ErasureReceipt,
}


def _model_for(path: Path) -> type:
    prefix = path.name.split(".")[0]
    return MODELS[prefix]


@pytest.mark.parametrize(
    "path", sorted(p for p in EXAMPLES.glob("*.json") if not p.name.startswith("internal")), ids=lambda p: p.name
)
def test_every_example_validates(path: Path) -> None:
    model = _model_for(path)
    obj = model.model_validate_json(path.read_bytes())
    # round trip: what we would write validates again to the same thing
    assert model.model_validate_json(obj.model_dump_json()) == obj


def test_examples_cover_every_message_kind() -> None:
    prefixes = {p.name.split(".")[0] for p in EXAMPLES.glob("*.json")}
    assert prefixes == {*MODELS, "internal"}


def test_internal_pack_example_holds_touch_rows_profiles_and_erasures_in_order() -> None:
    env = ENVELOPE.validate_json((EXAMPLES / "internal.pack.json").read_bytes())
    assert isinstance(env, PackEnvelope)
    kinds = [type(item) for item in env.items]
    assert kinds == [list, ProfileEnvelope, list, EraseEnvelope]
    touches = [Touch.from_row(item) for item in env.items if isinstance(item, list)]
    assert [t.uid for t in touches] == ["web/w-3", "call_center/c-9"]


def test_unknown_extra_fields_are_tolerated_on_producer_messages() -> None:
    ev = WebEvent.model_validate_json((EXAMPLES / "web.contact_form.anonymous.json").read_bytes())
    assert ev.model_extra == {"utm_source": "newsletter"}


def test_our_own_alert_message_is_strict() -> None:
    data = (EXAMPLES / "friction_alert.json").read_text().replace('"revision": 1', '"revision": 1, "oops": 1')
    with pytest.raises(ValidationError):
        FrictionAlert.model_validate_json(data)
