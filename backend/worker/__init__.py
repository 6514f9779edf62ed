"""Celery worker: the training task, worker presence and crash recovery."""
