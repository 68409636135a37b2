"""docs/grafana-dashboard.json stays in step with the metrics: valid JSON, a Prometheus
data source chosen by a variable, and a panel for every series importq exports."""

from __future__ import annotations

import json
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from importq.operations import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json"


def test_the_dashboard_shows_every_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"]["uid"] == "${datasource}" for p in panels)
    queries = " ".join(t["expr"] for p in panels for t in p["targets"])
    exported = text_string_to_metric_families(
        metrics.exposition({}, metrics.DatabaseState([])).decode()
    )
    names = {f.name for f in exported if f.name.startswith("importq_")}
    assert len(names) == 13, names
    assert sorted(n for n in names if n not in queries) == []
