"""The allocation service: decides which prompts to pilot, commit, defer and evict.

`core`, `records`, `permutation` and `strategies/` are pure (no I/O); `store` keeps a
run's state in Redis; `app` serves it over HTTP; `client` is the typed async client.
"""
