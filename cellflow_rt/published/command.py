"""``cellflow-rt models``: list, pull, path and remove Cellpose's published models."""
from __future__ import annotations

import click

# Approximate download sizes by network (Cellpose publishes none): a CPnet checkpoint, CPSAM's ViT-L.
#: Download sizes by network (ViT-L encoders), and for names whose network is smaller.
_APPROX_SIZE = {"cpnet": "~26 MB", "cpsam": "~1.2 GB", "cpdino": "~1.2 GB", "cpdino-vitb": "~350 MB"}


@click.group("models")
def models_command():
    """Cellpose's published models (cyto3, nuclei, cpsam, ...): list, pull, path, remove.

    A published name given to `run --pretrained_model` is fetched on first use; `pull` fetches ahead
    (for images and offline sites). Sources: Cellpose's cache ($CELLPOSE_LOCAL_MODELS_PATH or
    ~/.cellpose/models), else $CELLFLOW_RT_MODELS_URL (mirror, folder) or Cellpose's site. Converted
    models go to $CELLFLOW_RT_MODELS_DIR or the platform's cache folder.
    """


@models_command.command("list")
def list_command():
    """Installed models, then every published name and whether it is downloaded."""
    from ..registry import list_models
    from . import CATALOG, cache_dir, is_cached

    click.echo(f"cache: {cache_dir()}")
    click.echo("installed:")
    for info in list_models():
        size = info.onnx_path.stat().st_size / 1e6
        click.echo(f"  {info.name:28s} {info.source:8s} {size:8.1f} MB  {info.onnx_path}")
    click.echo("published by Cellpose (download size approximate):")
    for name, model in CATALOG.items():
        what = model.restore_type if model.kind == "restoration" else model.architecture
        if model.unsupported:
            state, what = f"not supported: {model.unsupported}", "-"
        else:
            state = "downloaded" if is_cached(name) else "not downloaded"
        size_model = " + size model" if model.size_model else ""
        click.echo(f"  {name:28s} {what:9s} {_APPROX_SIZE.get(name, _APPROX_SIZE[model.architecture]):>8s}{size_model:13s}  {state}")


@models_command.command("pull")
@click.argument("names", nargs=-1, required=True)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or step lines.")
@click.option("--force", is_flag=True, help="Download and convert again even when cached.")
def pull_command(names, quiet, force):
    """Download and convert published models into the cache (e.g. `models pull cyto3 nuclei`)."""
    from . import fetch_model

    failed = []
    for name in names:
        try:
            path = fetch_model(name, progress=not quiet, force=force)
        except (ValueError, OSError) as exc:
            click.echo(f"error: {name}: {exc}", err=True)
            failed.append(name)
            continue
        click.echo(f"{name}: {path.with_suffix('.onnx')}")
    if failed:
        raise click.ClickException(f"not pulled: {', '.join(failed)}")


@models_command.command("path")
@click.argument("name")
def path_command(name):
    """Print the ONNX file of an installed or cached model (nothing is downloaded)."""
    from ..registry import installed_model

    try:
        info = installed_model(name)
    except ValueError as exc:
        raise click.ClickException(str(exc))
    if info is None:
        raise click.ClickException(f"model {name!r} is not installed or cached; fetch it with "
                                   f"`cellflow-rt models pull {name}`")
    click.echo(info.onnx_path)


@models_command.command("remove")
@click.argument("names", nargs=-1, required=True)
def remove_command(names):
    """Delete converted published models from the cache."""
    from . import cache_dir, remove_model

    missing = []
    for name in names:
        removed = remove_model(name)
        if removed:
            click.echo(f"{name}: removed {', '.join(p.name for p in removed)} from {cache_dir()}")
        else:
            missing.append(name)
    if missing:
        raise click.ClickException(f"not in the cache {cache_dir()}: {', '.join(missing)}")
