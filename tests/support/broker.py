"""Transitional: moved to ``bench/support/broker.py``; import from there. Kept only so that
branches written before the move still import; delete once they have landed."""

from bench.support.broker import Mosquitto, free_port, wait_for_port  # noqa: F401
