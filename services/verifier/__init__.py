"""The verifier service: turns (response, reference answer, task) into a reward."""
