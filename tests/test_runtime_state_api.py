"""pin_state_api: a local Ray names its own dashboard in RAY_API_SERVER_ADDRESS, also when an earlier local Ray of
the same process had set it (the stale address made Ray Train's placement-group cleaner ask a dead dashboard)."""

import os

import pytest

from afov_ray import runtime


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "unset")   # recorded, so the value the test leaves is undone
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    monkeypatch.setattr(runtime, "_pinned", None)


def test_sets_the_dashboard_port_it_chose():
    kw = {"dashboard_host": "127.0.0.1"}
    runtime.pin_state_api(kw)
    assert kw["dashboard_port"] > 0
    assert os.environ["RAY_API_SERVER_ADDRESS"] == f"http://127.0.0.1:{kw['dashboard_port']}"


def test_a_second_local_ray_replaces_the_address_this_process_set():
    first, second = {"dashboard_port": 40001}, {"dashboard_port": 40002}
    runtime.pin_state_api(first)
    runtime.pin_state_api(second)
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://127.0.0.1:40002"


def test_a_user_set_address_is_kept_and_no_dashboard_means_no_pin(monkeypatch):
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://10.0.0.5:8265")
    kw = {}
    runtime.pin_state_api(kw)
    assert os.environ["RAY_API_SERVER_ADDRESS"] == "http://10.0.0.5:8265" and "dashboard_port" not in kw
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS")
    runtime.pin_state_api({"include_dashboard": False})
    assert "RAY_API_SERVER_ADDRESS" not in os.environ
