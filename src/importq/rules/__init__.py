"""Rules: what a dataset accepts, checked row by row in Python and screened in SQL."""
