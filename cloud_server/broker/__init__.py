"""The broker the fleet talks through: the embedded one, its generated config files, the NATS cluster."""
