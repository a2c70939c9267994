"""Trainer-side access to generation servers: completions client and weight-sync adapters."""
