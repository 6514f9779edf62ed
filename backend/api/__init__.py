"""The HTTP API: jobs, models, health and config; serves the frontend at `/`."""
