"""Notifications: events from the outbox to webhooks and Apprise URLs (see ``store/outbox.py``)."""
