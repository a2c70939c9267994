"""Named sets of procedural tasks from reasoning-gym, with difficulty controls, answer
formats the verifier reads, and train/validation/test splits built offline
(docs/tasks.md).

`catalog.py` defines the sets (pure data), `generate.py` draws and splits their prompts,
`build.py` writes a set's splits to a cached directory, `calibrate.py` measures a model's
pass-rate spread on the validation split, and `cli.py` is `pilot-commit tasks`.
"""
