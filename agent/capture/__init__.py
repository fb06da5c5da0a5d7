"""Capture stage: cameras and URL sources, MQTT samples, the frame inbox."""
