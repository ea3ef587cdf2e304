"""Monitoring and the feedback loop: streaming detectors over the guard's request log, alert
rules and their sinks, canary attacks on the live endpoint, automatic rollback through the
registry, and harvesting flagged inputs into a human review queue and back into training."""
