"""Where a touchpoint is judged: pure functions, no I/O, no clock, no Faust.

- `identity`: which customer an event belongs to, and how it was resolved.
- `repeat_contact`, `re_entry`: detectors, each a fold `detect(state, touch, rules) -> (state, verdict)`.
- `judge`: per-customer state; replays the detectors in event-time order and diffs the result
  against what was already published, so results depend only on which events exist.
"""
