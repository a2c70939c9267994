"""Imported once by the worker pool's forkserver: warms sympy and math-verify up there.

Importing this module has a side effect on purpose. The forkserver imports it before it
forks any worker, so every worker starts with the LaTeX grammar built and sympy's caches
primed, and a replacement for a killed worker is ready in milliseconds, not the second a
cold worker spends on its first parse (which would count against its first item's timeout).
"""

from services.verifier.symbolic import warm_up

warm_up()
