"""Delivery: the messages a finished batch owes, an email and a webhook. Each is sent at
most once after a recorded success."""
