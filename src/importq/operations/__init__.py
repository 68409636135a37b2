"""Running importq: ``importq doctor``'s checks, the process's logs, traces and metrics."""
