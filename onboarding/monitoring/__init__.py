"""Monitoring after go-live: health checks, alerts that fire once, SLA figures, hypercare and drift watch."""
