"""The allocation service: decides which prompts to pilot, commit, defer and evict.

`configs`, `core`, `protocol`, `records`, `permutation` and `strategies/` are pure (no
I/O): `protocol.transition` is the whole allocation protocol as a state machine. `store`
is its Redis adapter (with `runs`, `snapshot` and `cas`, the compare-and-set every write
goes through); `connection` makes the Redis or Redis Cluster client; `app` serves it over
HTTP; `client` is the typed async client.
"""
