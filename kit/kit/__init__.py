"""The how every service shares: ports, adapters, runtime, settings, telemetry."""
