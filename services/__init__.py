"""The nasprune service: an HTTP API (``services.api``) over a durable job queue (``services.jobs``)."""
