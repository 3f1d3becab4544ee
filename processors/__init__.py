"""Where a touchpoint is judged: pure functions, no I/O, no clock, no Faust.

- `identity`: which customer an event belongs to, and how it was resolved.
- `rules`: the rule file's model (config/rules.yaml), validated; `templates`: the detectors of its
  templates (repeat, known_entry, sequence, chain), each a fold `step(state, touch, ...) -> (state, verdict)`.
- `judge`: per-customer state; replays the detectors in event-time order and diffs the result
  against what was already published, so results depend only on which events exist.
"""
