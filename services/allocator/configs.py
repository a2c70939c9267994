"""Every strategy's configuration: the `[allocation]` table of a trainer config and the
`config` of a run spec. Plain pydantic models, importable without the strategies
themselves (the trainer validates its config with these only).

`AnyStrategyConfig` is the discriminated union of all of them, told apart by `strategy`;
a new strategy adds its config here and its class to `strategies.STRATEGIES`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EPS = 1e-9  # slack of the band comparisons (pass rates are ratios of small integers)


class StrategyConfig(BaseModel):
    """Parameters shared by every strategy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    train_batch_size: int = Field(128, ge=1, le=65536, description="Groups per optimiser step (B).")
    max_rounds: int = Field(
        10, ge=1, le=1000, description="Generation rounds per step before the step fails loudly."
    )
    success_threshold: float = Field(
        0.5, gt=0.0, le=1.0, description="A rollout counts as a success when reward >= this."
    )

    def group_size(self) -> int:
        """Rollouts in one train group (G)."""
        raise NotImplementedError


class FullGroupConfig(StrategyConfig):
    """A strategy whose every group is sampled whole: n rollouts per prompt."""

    n: int = Field(16, ge=2, le=4096, description="Rollouts per prompt (group size G).")

    def group_size(self) -> int:
        return self.n


def check_band(p_lower: float, p_upper: float) -> None:
    """ValueError when the gate band [p_lower, 1 - p_upper] is empty."""
    if p_lower > 1.0 - p_upper + EPS:
        raise ValueError(f"empty gate band: p_lower={p_lower} > 1 - p_upper")


class GRPOConfig(FullGroupConfig):
    """Plain group sampling: B prompts x G rollouts per step."""

    strategy: Literal["grpo"] = "grpo"


class DAPOConfig(FullGroupConfig):
    """Dynamic sampling with zero-variance filtering."""

    strategy: Literal["dapo"] = "dapo"
    gen_batch_size: int | None = Field(
        None, ge=1, le=65536, description="Prompts sampled per round; default train_batch_size."
    )

    def prompts_per_round(self) -> int:
        return self.gen_batch_size or self.train_batch_size


class PilotCommitConfig(StrategyConfig):
    """Pilot-Commit parameters; defaults follow the reference recipe."""

    strategy: Literal["pilot_commit"] = "pilot_commit"
    gen_batch_size: int | None = Field(
        None, ge=1, le=65536, description="Prompts piloted per round; default train_batch_size."
    )
    n_pilot: int = Field(8, ge=1, le=4096, description="Rollouts per piloted prompt.")
    n_commit: int = Field(8, ge=1, le=4096, description="Fresh rollouts per committed prompt.")
    n_pilot_reuse: int | None = Field(
        None,
        ge=0,
        le=4096,
        description="Pilot rollouts reused in the train group (default: all n_pilot); a "
        "subset as close to half right / half wrong as possible is kept.",
    )
    p_lower: float = Field(0.25, ge=0.0, le=1.0, description="Gate: p_hat >= p_lower.")
    p_upper: float = Field(0.25, ge=0.0, le=1.0, description="Gate: p_hat <= 1 - p_upper.")
    exclude_threshold: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Evict (at epoch end) when the pilot p_hat >= this; null disables eviction.",
    )
    buffer_max_off_steps: int = Field(
        4, ge=0, le=1000, description="Steps a buffered prompt stays committable."
    )
    buffer_sampling: Literal["max_variance", "random"] = Field(
        "max_variance", description="Which buffered prompts to commit first."
    )

    @model_validator(mode="after")
    def _band_not_empty(self) -> PilotCommitConfig:
        check_band(self.p_lower, self.p_upper)
        if self.n_pilot_reuse is not None and self.n_pilot_reuse > self.n_pilot:
            raise ValueError("n_pilot_reuse cannot exceed n_pilot")
        return self

    def pilots_per_round(self) -> int:
        return self.gen_batch_size or self.train_batch_size

    def reused(self) -> int:
        return self.n_pilot if self.n_pilot_reuse is None else self.n_pilot_reuse

    def group_size(self) -> int:
        return self.reused() + self.n_commit


class PosteriorGateConfig(StrategyConfig):
    """Beta-posterior gating; defaults suit G = 32 (tiny task) and scale with G."""

    strategy: Literal["posterior_gate"] = "posterior_gate"
    max_rounds: int = Field(
        50, ge=1, le=1000, description="Generation rounds per step before the step fails loudly."
    )
    n: int = Field(32, ge=2, le=4096, description="Rollouts per train group (G).")
    n_pilot: int = Field(
        4, ge=1, le=4096, description="Pilot rollouts for a prompt with no evidence yet."
    )
    n_pilot_min: int = Field(
        2, ge=1, le=4096, description="Smallest pilot (for a prompt already rich in evidence)."
    )
    p_lower: float = Field(0.125, ge=0.0, le=1.0, description="Band: p >= p_lower.")
    p_upper: float = Field(0.25, ge=0.0, le=1.0, description="Band: p <= 1 - p_upper.")
    prior_alpha: float = Field(
        0.5, gt=0.0, le=1000.0, description="Beta prior: successes (default: Jeffreys)."
    )
    prior_beta: float = Field(0.5, gt=0.0, le=1000.0, description="Beta prior: failures.")
    half_life_steps: float = Field(
        500.0, gt=0.0, le=1e9, description="Steps after which a reward weighs half as evidence."
    )
    skip_confidence: float = Field(
        0.8, gt=0.5, lt=1.0, description="Skip when P(p below / above the band) >= this."
    )
    direct_confidence: float | None = Field(
        0.8,
        gt=0.5,
        le=1.0,
        description="Commit a full group without a pilot when P(p in band) >= this; "
        "null disables direct commits.",
    )
    recheck_rate: float = Field(
        0.1, ge=0.0, le=1.0, description="Share of confident skips piloted anyway."
    )
    evict_pass_rate: float | None = Field(
        0.9, gt=0.0, le=1.0, description="'Solved' means p >= this; null disables eviction."
    )
    evict_confidence: float = Field(
        0.95, gt=0.5, lt=1.0, description="Evict when P(p >= evict_pass_rate) >= this."
    )
    evict_min_evidence: float = Field(
        16.0, ge=0.0, le=1e9, description="Rollouts of (discounted) evidence needed to evict."
    )
    buffer_max_off_steps: int = Field(
        4, ge=0, le=1000, description="Steps a buffered prompt stays committable."
    )
    lookahead_steps: float = Field(
        1.0, ge=0.0, le=100.0, description="Steps of future commits the buffer is filled for."
    )
    pass_rate_init: float = Field(
        0.5, gt=0.0, le=1.0, description="Pass-through rate assumed before any pilot."
    )
    pass_rate_smoothing: float = Field(
        0.02, gt=0.0, le=1.0, description="EWMA weight of one pilot in the pass-through rate."
    )
    max_pilots_per_round: int | None = Field(
        None, ge=1, le=1 << 20, description="Cap on pilots per round; default 4 x B."
    )

    @model_validator(mode="after")
    def _consistent(self) -> PosteriorGateConfig:
        check_band(self.p_lower, self.p_upper)
        if not self.n_pilot_min <= self.n_pilot < self.n:
            raise ValueError("need n_pilot_min <= n_pilot < n")
        return self

    def group_size(self) -> int:
        return self.n

    def max_pilots(self) -> int:
        return self.max_pilots_per_round or 4 * self.train_batch_size

    def round_budget(self, committed: int) -> int:
        """Most rollouts one round may ask for: every pilot at full size, every missing
        train group a whole fresh group."""
        need = self.train_batch_size - committed
        return self.max_pilots() * self.n_pilot + max(need, 0) * self.n


AnyStrategyConfig = Annotated[
    GRPOConfig | DAPOConfig | PilotCommitConfig | PosteriorGateConfig,
    Field(discriminator="strategy"),
]
