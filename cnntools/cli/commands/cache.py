"""`cnntools cache list|clear`: the image stores cnntools keeps, and removing them."""

from __future__ import annotations

from typing import Annotated, Literal, Optional

import typer

from cnntools.cli import options
from cnntools.output import emitter as output

_COLUMNS = ["file", "kind", "bytes", "modified", "age_days"]


def main(
    action: Annotated[Literal["list", "clear"], typer.Argument(metavar="list|clear", help="list the files, or clear (remove) them.", show_default=False)],
    older_than: Annotated[
        Optional[float],
        typer.Option("--older-than", metavar="DAYS", min=0, help="Only files not written for DAYS days (fractions allowed: 0.5 is 12 hours)."),
    ] = None,
    fmt: options.Format = "table",
    quiet: options.Quiet = False,
    debug: options.Debug = False,
) -> None:
    """List or remove the image stores cnntools keeps in its cache folder.

    Image folders (and large CIFAR pickle folders) are decoded once into a store in the
    cache folder ($CNNTOOLS_CACHE, else $XDG_CACHE_HOME/cnntools, else ~/.cache/cnntools);
    stores of several GB accumulate there. `list` shows them oldest first (file, kind,
    bytes, when last written); `clear` removes them, the next run decodes its folder again.
    Only files cnntools wrote are touched (folder-*.safetensors stores, their .lock files, the
    .tmp-store-* file of a build that was killed): anything else in the folder is left alone.
    A store another process is building, and a partial file written in the last hour, are
    kept. A run that has a store open keeps reading it. Downloaded datasets live in --data-dir
    and pretrained weights in torch's and Hugging Face's caches, not here.

    \b
    Examples:
      cnntools cache list
      cnntools cache clear --older-than 30
      cnntools cache list --format json | jq .bytes
    """
    output.configure(quiet=quiet, debug=debug)
    from cnntools.data.cache import cache_dir, cache_entries, clear_cache

    folder = cache_dir()
    where = None if folder is None else str(folder)
    if action == "list":
        entries = cache_entries(older_than)
        total = sum(e["bytes"] for e in entries)
        output.emit({"folder": where, "bytes": total, "entries": entries}, fmt, schema="cache", rows=entries, columns=_COLUMNS)
        output.info(f"{len(entries)} file(s), {_size(total)} in {where or 'no cache folder (CNNTOOLS_CACHE=off)'}")
        return
    result = clear_cache(older_than)
    freed = sum(e["bytes"] for e in result["removed"])
    doc = {"folder": where, "bytes_freed": freed, **result}
    output.emit(doc, fmt, schema="cache.clear", rows=result["removed"], columns=_COLUMNS)
    kept = f"; kept {len(result['kept'])} in use or being written" if result["kept"] else ""
    output.info(f"removed {len(result['removed'])} file(s), {_size(freed)}{kept}")


def _size(nbytes: int) -> str:
    from cnntools.core.runtime import human_bytes

    return human_bytes(nbytes)
