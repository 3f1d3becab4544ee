"""Build the friction dashboard: KPIs over time, top matters, forms that ask again for known data.

Reads only the deduplicated views and the SQL kit, so the page shows what analysts would get.
Charts are matplotlib SVG inlined into one self-contained HTML file (no scripts, no CDN).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: render to files only
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402

from sinks.clickhouse import kit  # noqa: E402

TEMPLATES = Path(__file__).parent
COLORS = {"contacts": "#4c72b0", "repeat": "#dd5143", "reentry": "#e8a33c", "alerts": "#6b4c9a"}


@dataclass
class Report:
    html: str
    charts: int
    generated_at: datetime


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is inlined


def _daily_chart(days: list[Any], series: dict[str, list[int]], title: str) -> str:
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for (label, values), color in zip(series.items(), COLORS.values(), strict=False):
        ax.plot(days, values, marker="o", markersize=3, label=label, color=color)
    ax.set_title(title, loc="left", fontsize=11)
    ax.legend(frameon=False, fontsize=8)
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return _svg(fig)


def _bar_chart(labels: list[str], values: list[float], title: str, color: str, fmt: str = "{:.0f}") -> str:
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(3, len(labels)) + 0.6))
    bars = ax.barh(labels[::-1], values[::-1], color=color)
    ax.bar_label(bars, labels=[fmt.format(v) for v in values[::-1]], fontsize=8, padding=2)
    ax.set_title(title, loc="left", fontsize=11)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig)


def build_report(client: Any, db: str, window_days: int = 7) -> Report:
    params = kit.default_params(db, window_days)
    qs = kit.queries()
    daily = client.execute(
        f"SELECT day, sum(contacts), sum(repeat_contacts), sum(reentry_touchpoints) "
        f"FROM {db}.kpi_daily_view GROUP BY day ORDER BY day"
    )
    # alerts of every rule (the kpi table counts each rule's alerts as the metric <rule>_alert)
    alerted = dict(
        client.execute(
            f"SELECT day, sum(n) FROM (SELECT day, metric, uniqExactMerge(ids) AS n FROM {db}.kpi_daily "
            f"WHERE metric LIKE '%alert' GROUP BY day, metric) AS per_metric GROUP BY day"
        )
    )
    daily = [(*r, alerted.get(r[0], 0)) for r in daily]
    ((touchpoints, customers, contacts, repeats, reentries),) = client.execute(
        f"SELECT count(), uniqExact(customer_id), countIf(contact = 'new'), countIf(has(friction, 'repeat_contact')), "
        f"countIf(has(friction, 're_entry')) FROM {db}.timeline"
    )
    ((open_alerts, high_alerts),) = client.execute(
        f"SELECT countIf(status = 'open'), countIf(status = 'open' AND severity = 'high') FROM {db}.friction_alerts"
    )
    _, fcr_rows = kit.run(client, qs["one_contact_resolution"], **params)
    _, place_rows = kit.run(client, qs["re_entry_rate_by_field_and_place"], **params)
    top_cols, top_rows = kit.run(client, qs["top_customers_by_friction"], **params)
    rule_cols, rule_rows = kit.run(client, qs["friction_by_rule"], **params)

    charts: dict[str, str] = {}
    if daily:
        days = [r[0] for r in daily]
        charts["daily_contacts"] = _daily_chart(
            days,
            {"new contacts": [r[1] for r in daily], "repeat contacts": [r[2] for r in daily]},
            "Contacts and repeat contacts per day",
        )
        charts["daily_friction"] = _daily_chart(
            days,
            {"touchpoints with re-entered data": [r[3] for r in daily], "alerts raised": [r[4] for r in daily]},
            "Re-entry and alerts per day",
        )
    matters = sorted(fcr_rows, key=lambda r: (-(1 - r[2]), r[0]))[:10]
    if matters:
        charts["top_matters"] = _bar_chart(
            [r[0] for r in matters],
            [round(100 * (1 - r[2]), 1) for r in matters],
            f"Matters customers come back about (% of contacts followed by another within {window_days} days)",
            COLORS["repeat"],
            "{:.1f}%",
        )
    by_place: dict[str, int] = {}
    for _field, place, _entries, place_reentries, _rate in place_rows:
        by_place[place] = by_place.get(place, 0) + place_reentries
    places = sorted(((p, n) for p, n in by_place.items() if n), key=lambda x: (-x[1], x[0]))[:10]
    if places:
        charts["top_places"] = _bar_chart(
            [p for p, _ in places],
            [n for _, n in places],
            "Forms, steps and queues that ask again for data we already have (re-entries)",
            COLORS["reentry"],
        )
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    generated = datetime.now(UTC).replace(microsecond=0)
    html = env.get_template("report.html.j2").render(
        generated_at=generated,
        db=db,
        cards=[
            ("touchpoints", touchpoints),
            ("customers", customers),
            ("new contacts", contacts),
            ("repeat rate", f"{repeats / contacts:.1%}" if contacts else "-"),
            ("touchpoints with re-entered data", reentries),
            ("open alerts", open_alerts),
            ("of them high", high_alerts),
        ],
        charts=charts,
        fcr_rows=fcr_rows,
        place_rows=[r for r in place_rows if r[3]][:15],
        top_cols=top_cols,
        top_rows=top_rows,
        rule_cols=rule_cols,
        rule_rows=rule_rows,
        window_days=window_days,
    )
    return Report(html, len(charts), generated)
