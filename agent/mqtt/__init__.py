"""MQTT: the port, its options, the in-flight window, the durable outbox, Home Assistant."""
