"""Operations.

What plant IT sees and systemd talks to (metrics, health, HTTP endpoints, logs, task
supervision, sd_notify).
"""
