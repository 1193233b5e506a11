"""The demo's check of the node agent's request counters against the load it offered:
per-instance counters summed per function while instances come and go."""

from __future__ import annotations

from prometheus_client.samples import Sample

from services.cli.scrape import CounterIncrease, rate_table

NAME = "dilu_instance_requests_total"


def served(**by_instance: float) -> list[Sample]:
    return [Sample(NAME, {"function": instance.split("_")[0], "instance": instance}, value)
            for instance, value in by_instance.items()] + [
        Sample("dilu_other_total", {"function": "a"}, 1e9)]


def test_increase_counts_from_the_first_scrape_new_instances_from_zero_and_keeps_gone_ones() -> None:
    counted = CounterIncrease(NAME)
    counted.observe(served(a_1=100, b_1=7))          # before the load: a_1 had served 100
    counted.observe(served(a_1=150, a_2=20, b_1=9))  # a_2 is new: all its 20 count
    counted.observe(served(a_2=50, b_1=12))          # a_1 scaled in: its 50 stay counted
    assert counted.by_label() == {"a": 50 + 50, "b": 5}


def test_rate_table_divides_by_the_duration_and_gives_ratios() -> None:
    table, ratios = rate_table({"a": 100}, {}, {"a": 90.0}, duration_s=10)
    assert ratios == {"a": 0.9}
    assert "10.00" in table and "9.00" in table
