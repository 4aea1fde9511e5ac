"""limpyd benchmarks: ``python -m benchmarks`` (scripts run on demand, never collected by pytest)."""
