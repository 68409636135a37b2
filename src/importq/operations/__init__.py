"""Running importq: ``importq doctor``'s checks, and the process's logs."""
