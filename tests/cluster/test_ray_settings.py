"""The scale-out settings: ``POLLAMA_RAY_ADDRESS``, ``POLLAMA_MAX_REPLICAS`` and ``serve --ray``."""

from __future__ import annotations

import pytest

from pollama.cli.main import build_parser
from pollama.config import Settings
from pollama.errors import ConfigError


def test_ray_settings_come_from_the_environment() -> None:
    plain = Settings.from_env({})
    assert (plain.ray_address, plain.max_replicas) == ("", 2)
    clustered = Settings.from_env({"POLLAMA_RAY_ADDRESS": " auto ", "POLLAMA_MAX_REPLICAS": "4"})
    assert (clustered.ray_address, clustered.max_replicas) == ("auto", 4)
    assert clustered.describe()["POLLAMA_RAY_ADDRESS"] == "auto"
    with pytest.raises(ConfigError, match="^POLLAMA_MAX_REPLICAS: must be at least 1, got '0'"):
        Settings.from_env({"POLLAMA_MAX_REPLICAS": "0"})


def test_serve_takes_a_ray_address() -> None:
    assert build_parser().parse_args(["serve", "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"
    assert build_parser().parse_args(["serve"]).ray == ""
