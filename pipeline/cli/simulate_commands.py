"""``jwtwatch simulate``: labelled synthetic traffic, from the simulator's defaults or a world of its family."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli._options import env
from pipeline.cli._output import console, err, fail

if TYPE_CHECKING:
    from pipeline.simulate import SimulationParams


def simulate_command(
    out: Annotated[Path, typer.Option("--out", help="Events file: .jsonl, .jsonl.gz or .parquet.")],
    minutes: Annotated[float, typer.Option(envvar=env("minutes"), help="Simulated minutes of traffic.")] = 30.0,
    seed: Annotated[
        int | None,
        typer.Option(
            envvar=env("seed"),
            help="Random seed (same seed, same traffic). Default 0; with --family-seed, the drawn world's own.",
        ),
    ] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="Write the injected incidents here (JSONL).")] = None,
    baseline_only: Annotated[
        bool,
        typer.Option(
            "--baseline-only", help="No attacks: training traffic (of a family world: its attack-free stream)."
        ),
    ] = False,
    users: Annotated[int | None, typer.Option(help="Browser users (default: the simulator's).")] = None,
    mobile: Annotated[
        int | None,
        typer.Option(help="Mobile-app users (default: the simulator's; of a family world: its share of --users)."),
    ] = None,
    services: Annotated[int | None, typer.Option(help="Service accounts (default: the simulator's).")] = None,
    offices: Annotated[int | None, typer.Option(help="Office NATs shared by users (default: the simulator's).")] = None,
    ip_db_out: Annotated[
        Path | None,
        typer.Option(
            "--ip-db-out",
            help="Also write the simulated world's networks (ASN, organisation, network_kind) as a MaxMind DB "
            "file, for --ip-db.",
        ),
    ] = None,
    family_seed: Annotated[
        int | None,
        typer.Option(
            "--family-seed",
            min=0,
            help="Draw the world's behaviours from the simulator family with this seed "
            "(pipeline/simulate/family.py: devices per user, network switching, IPv6, attackers' networks, ...) "
            "instead of the simulator's defaults. --minutes, --users, --mobile, --services and --offices still set "
            "the sizes; those not given are the family's defaults (WorldFamily).",
        ),
    ] = None,
    family_region: Annotated[
        str | None,
        typer.Option(
            "--family-region",
            help="With --family-seed: 'tuning' (default; tune and train on these worlds) or 'heldout' "
            "(evaluate only: worlds nobody tuned against).",
        ),
    ] = None,
    family_world: Annotated[
        int | None,
        typer.Option("--family-world", min=0, help="With --family-seed: which world of the region (default 0)."),
    ] = None,
) -> None:
    """Synthetic traffic — browsers, mobile apps, services, offices — with every threat injected and labelled."""
    from pipeline.simulate import simulate
    from pipeline.simulate.io import write_events, write_ip_db, write_labels

    sizes = {"browsers": users, "services": services, "offices": offices}
    given = {k: v for k, v in sizes.items() if v is not None}
    if family_seed is None:
        params = _default_world(minutes, seed, mobile, baseline_only, family_region, family_world, given)
    else:
        params = _family_world(minutes, seed, mobile, baseline_only, family_seed, family_region, family_world, given)
    with err.status("simulating…"):
        sim = simulate(params)
        write_events(sim, out)
        if labels is not None:
            write_labels(sim, labels)
        networks = write_ip_db(sim, ip_db_out) if ip_db_out is not None else 0
    console.print(f"{len(sim.events)} events, {len(sim.incidents)} incidents → {out}")
    if ip_db_out is not None:
        console.print(f"{networks} networks → {ip_db_out}")


def _default_world(
    minutes: float,
    seed: int | None,
    mobile: int | None,
    baseline_only: bool,
    family_region: str | None,
    family_world: int | None,
    sizes: dict[str, Any],
) -> SimulationParams:
    """The simulator's own world, with the sizes given."""
    from pipeline.simulate import SimulationParams

    if family_region is not None or family_world is not None:
        fail("--family-region and --family-world draw a world of a family: give --family-seed too")
    params = SimulationParams(minutes=minutes, seed=0 if seed is None else seed, **sizes)
    if mobile is not None:
        params = dataclasses.replace(params, mobile=mobile)
    if baseline_only:
        params = dataclasses.replace(params, threats=())
    return params


def _family_world(
    minutes: float,
    seed: int | None,
    mobile: int | None,
    baseline_only: bool,
    family_seed: int,
    family_region: str | None,
    family_world: int | None,
    sizes: dict[str, Any],
) -> SimulationParams:
    """A world drawn from the simulator family (its attack-free stream with ``baseline_only``); says which."""
    from pipeline.simulate.family import REGIONS, WorldFamily, train_params

    region = next((r for r in REGIONS if r == (family_region or "tuning")), None)
    if region is None:
        fail(f"--family-region must be one of {', '.join(REGIONS)}, not {family_region!r}")
    index = family_world or 0
    world = WorldFamily(seed=family_seed, minutes=minutes, **sizes).world(index, region)
    # The attack-free stream of a world is another stretch of its time (train_params: a seed of its own).
    params = train_params(world.params) if baseline_only else world.params
    overrides: dict[str, Any] = {"seed": seed, "mobile": mobile}
    params = dataclasses.replace(params, **{k: v for k, v in overrides.items() if v is not None})
    err.print(
        f"family {family_seed}, {region} world {index}: {params.browsers} browser and {params.mobile} mobile "
        f"users (drawn mobile ratio {world.draws['mobile_ratio']:.3f}), {params.services} services, "
        f"{params.offices} offices, {params.minutes:g} min, seed {params.seed}"
        + (" (its attack-free stream)" if baseline_only else ""),
        markup=False,
    )
    return params
