"""What the tests and the benchmarks both need: a real Mosquitto, the agent as a child process,
a small MQTT subscriber."""
