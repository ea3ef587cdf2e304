"""The production guard: a FastAPI service in front of a classifier that authenticates, limits,
validates, watches for attacks in progress, abstains when an input is out of distribution or
its calibrated confidence is low, logs one JSON line per request and exports metrics."""
