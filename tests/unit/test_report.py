"""`cem report` on the kit dataset (chdb): the page is one self-contained HTML file with its
charts and tables, and the numbers on it are the dataset's."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from sinks.clickhouse.migrate import migrate
from sinks.report.build import build_report
from tests.chdb_client import ChdbClient
from tests.kit_dataset import load


class Outline(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.tags: dict[str, int] = {}
        self.stack: list[str] = []
        self.text: list[str] = []
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        if a.get("id"):
            self.ids.append(a["id"] or "")
        if tag in ("script", "link", "img") or (tag == "use" and a.get("href", "").startswith("http")):
            self.sources.append(tag)

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.text.append(data.strip())


def test_report_renders_charts_tables_and_numbers(tmp_path: Path) -> None:
    client = ChdbClient(str(tmp_path / "ch"))
    migrate(client, "cem")
    load(client, "cem")
    report = build_report(client, "cem")
    client.close()
    page = Outline()
    page.feed(report.html)

    assert report.charts == 4 and page.tags.get("svg", 0) == 4
    assert {"cards", "chart-daily_contacts", "chart-daily_friction", "chart-top_matters", "chart-top_places"} <= set(
        page.ids
    )
    assert {"rules", "ocr", "reentry", "top-customers"} <= set(page.ids)
    assert page.sources == []  # self-contained: no scripts, stylesheets or images to fetch
    text = " ".join(page.text)
    # cards: 20 touchpoints, 5 customers, 9 new contacts, 3 of them repeats
    assert "20 touchpoints" in text and "5 customers" in text and "9 new contacts" in text
    assert "33.3% repeat rate" in text and "6 touchpoints with re-entered data" in text
    # the OCR table: refund_status 4 contacts, OCR 75%, FCR (calls) 66.7%
    assert "refund_status 4 75.0% 3 66.7%" in text
    assert "C-1042 gold 2 5 4 4" in text
    assert "repeat_contact 3 2 3 2 0" in text and "re_entry 6 2 2 2 0" in text  # friction by rule
    assert "web:profile/edit" not in text  # places without re-entries are left out of that table
    Path(tmp_path / "report.html").write_text(report.html)
