"""Arms of an experiment: named override sets, each compared with a reference arm run on the same seeds.

    base            the fine-tune as configured (ST-LoRA from the demo base by default)
    +mhc            model.kwargs.use_mhc=true
    +velocity       model.kwargs.use_velocity_alignment=true
    +mhc+velocity   both
    stability       an lr ladder: base@lr=X and +mhc@lr=X for each X of LR_LADDER, each +mhc arm compared with
                    base at the same learning rate (does mHC keep a fine-tune stable where the plain one is not?)
    lambda          a velocity-weight ladder: base, then +velocity@lambda=X for each X of LAMBDA_LADDER, each
                    compared with base (what held-out ED costs for how much cos(dz, v_z); the figure
                    ``core.figures.experiment.ed_against_velocity`` draws it)

``parse_arms("base,+mhc")`` gives the arms; the first is the reference of the others. Custom arms are
``Arm(name, overrides)``; ``--arm NAME key=value ...`` on the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import ConfigError

PRESETS: dict[str, tuple[str, ...]] = {
    "base": (),
    "+mhc": ("model.kwargs.use_mhc=true",),
    "+velocity": ("model.kwargs.use_velocity_alignment=true",),
    "+mhc+velocity": ("model.kwargs.use_mhc=true", "model.kwargs.use_velocity_alignment=true"),
}
STABILITY = "stability"
LR_LADDER = (1e-3, 1e-2, 3e-2, 1e-1)
LAMBDA = "lambda"
LAMBDA_LADDER = (0.03, 0.1, 0.3, 1.0)
# What every arm starts from unless the user overrides it: the README's fine-tune of the demo base.
DEFAULT_COMMON = ("model.init_from=demo",)


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: tuple[str, ...] = ()
    reference: str | None = None  # the arm it is compared with; None for a reference arm
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def slug(self) -> str:
        """The arm's name as it may appear in a run folder name: '+mhc+velocity' -> 'mhc-velocity'."""
        text = self.name.replace("@", "-").replace("=", "").replace("+", "-")
        text = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
        return text or "arm"


def stability_arms(ladder=LR_LADDER) -> list[Arm]:
    arms = []
    for lr in ladder:
        setting = f"training.learning_rate={lr:g}"
        base = Arm(f"base@lr={lr:g}", (setting,))
        arms += [base, Arm(f"+mhc@lr={lr:g}", (*PRESETS["+mhc"], setting), reference=base.name)]
    return arms


def lambda_arms(ladder=LAMBDA_LADDER) -> list[Arm]:
    return [Arm("base"), *(Arm(f"+velocity@lambda={lam:g}",
                               (*PRESETS["+velocity"], f"model.kwargs.velocity_lambda={lam:g}")) for lam in ladder)]


def parse_arms(text: str, custom: list[list[str]] | None = None) -> list[Arm]:
    """Arms from "base,+mhc" (preset names, comma-separated, or "stability" alone) and custom arms given as
    [name, key=value, ...] lists; the first arm is the reference of every arm that has none."""
    names = [part.strip() for part in (text or "").split(",") if part.strip()]
    arms: list[Arm] = []
    for name in names:
        if name == STABILITY:
            arms += stability_arms()
        elif name == LAMBDA:
            arms += lambda_arms()
        elif name in PRESETS:
            arms.append(Arm(name, PRESETS[name]))
        else:
            raise ConfigError(f"unknown arm {name!r}; the named arms are {', '.join([*PRESETS, STABILITY, LAMBDA])} "
                              "(or give your own with --arm NAME key=value ...)")
    for entry in custom or []:
        if not entry:
            raise ConfigError("--arm needs a name and at least one key=value override")
        name, overrides = entry[0], tuple(entry[1:])
        bad = [o for o in overrides if "=" not in o]
        if "=" in name or bad or not overrides:
            raise ConfigError(f"--arm {' '.join(entry)}: give a name, then key=value overrides "
                              "(e.g. --arm lr-high training.learning_rate=0.03)")
        arms.append(Arm(name, overrides))
    if not arms:
        raise ConfigError("no arms: give --arms base,+mhc (or stability), or --arm NAME key=value ...")
    seen = [a.name for a in arms]
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    slugs = [a.slug for a in arms]
    if duplicates or len(set(slugs)) != len(slugs):
        raise ConfigError(f"arm names must be distinct (also as folder names); repeated: "
                          f"{', '.join(duplicates) or ', '.join(sorted({s for s in slugs if slugs.count(s) > 1}))}")
    reference = arms[0].name
    return [a if a.reference or a.name == reference or _is_reference(a, arms) else
            Arm(a.name, a.overrides, reference) for a in arms]


def _is_reference(arm: Arm, arms: list[Arm]) -> bool:
    # In the stability preset every base@lr arm is the reference of its +mhc twin.
    return any(other.reference == arm.name for other in arms)


def default_name(arms: list[Arm]) -> str:
    """The experiment's name when none is given, from its arms, so that the same command resumes it."""
    if any(a.name.startswith("base@lr=") for a in arms):
        return STABILITY
    if any(a.name.startswith("+velocity@lambda=") for a in arms):
        return LAMBDA
    return "-vs-".join(a.slug for a in arms)[:80]
