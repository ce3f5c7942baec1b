"""Running the service: serve's settings and loop, metrics, the dashboard, the fleet view, the systemd unit."""
