"""The nasprune service: an HTTP API (``nasprune.service.api``) over a durable job queue (``nasprune.service.jobs``)."""
