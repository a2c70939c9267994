"""Pieces every service and client shares: process control, HTTP retries, metrics."""
