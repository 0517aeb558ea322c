"""The relctl-agent process: its entry point (main.py), the composition root that builds and
stops every part in order (app.py), the metrics registry and /metrics server (metrics.py, the
only importer of prometheus_client; metrics_http.py), systemd's notify protocol (sdnotify.py)
and logging (logs.py).

It may import every other room of the agent; nothing imports it.
"""
