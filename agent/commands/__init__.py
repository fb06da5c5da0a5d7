"""Commands over MQTT: the router and the handler table of a running agent."""
