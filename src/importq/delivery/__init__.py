"""Delivery: what a finished batch owes its initiator (email, webhook), sent at most once."""
