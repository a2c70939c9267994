"""`pilot-commit bench efficiency`: cumulative rollouts to a target accuracy, per strategy,
on paired seeds, run as resumable cells so that a benchmark completes in parts.

A cell is one run (suite, setting, strategy, seed) to an equal rollout budget, evaluated
on the same rollout schedule as every other cell of its suite; its result is
`<output>/<suite>/<setting>/<strategy>/seed<k>/cell.json`. Each invocation runs the cells
not yet complete, in order (each setting's grpo seeds first, then the others seed by
seed), resumes an interrupted cell from its checkpoint, and starts no new cell after
--max-hours. Each setting's target (warm start + 70% of grpo's mean best gain) is frozen
in `target.json` from its grpo cells before any other cell of the setting runs. Every
generated rollout counts (pilots and discarded groups included). A report (after each
invocation, or alone with --report) gives, per setting, rollouts to target per seed, the
paired ratios against grpo with 95% intervals over seeds, and where the rollouts
went (JSON, Markdown, PNGs).

Modules: suites (what runs), cells (running and keeping cells, the frozen target),
stats (the arithmetic), report and plots (reading the cells), cli (the options).
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from pilot_commit.bench.efficiency.cli import main as cli_main

    return cli_main(argv)
