"""Every message cem-pipeline reads or writes, as pydantic models: one module per message kind.

Producers we do not own (web tracking, contact-centre platform, booking engine, CRM export)
get tolerant models (unknown extra fields are kept out of the way); messages we produce
(`FrictionAlert`, internal envelopes) are strict. `schemas/examples/` holds one example per
kind and `tests/unit/test_schemas.py` loads every one of them.
"""
