"""Transitional: moved to ``bench/support/deploy_helpers.py``; import from there. Kept only so
that branches written before the move still import; delete once they have landed."""

from bench.support.deploy_helpers import (  # noqa: F401
    LABELS,
    AgentHarness,
    manifest_dict,
    offer_message,
    raw_push,
    tiny_tflite,
    write_bundle,
)
