"""Transitional: moved to ``bench/support/mqtt_client.py``; import from there. Kept only so that
branches written before the move still import; delete once they have landed."""

from bench.support.mqtt_client import Collector, Received  # noqa: F401
