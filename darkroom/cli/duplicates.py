"""``darkroom duplicates``: the groups of near-duplicate photos in the store (the ``phash`` task).

Every stored perceptual hash is read a batch at a time and grouped by an index of the hashes
(``tasks.phash.group_near_duplicates``: multi-index hashing, never all pairs), so a million photos
group in seconds.
"""

from __future__ import annotations

from typing import Annotated

import typer

from darkroom.cli.common import fail, out, print_json, read_settings, sessions, short_path


def register(app: typer.Typer) -> None:
    app.command()(duplicates)


def duplicates(
    distance: Annotated[int | None, typer.Option(
        "--distance", "-d", min=0, max=32,
        help="Most bits (of 64) two hashes may differ in (default: DARKROOM_PHASH_DISTANCE, 8).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="The groups as JSON: [{size, images: [{sha256, path, phash}]}].")] = False,
) -> None:
    """Groups of near-duplicate photos: the same photo re-encoded, resized, lightly cropped or
    recompressed by a messenger app. Needs the phash task's results (DARKROOM_TASKS has phash by
    default; `darkroom rerun --task phash` hashes photos stored before)."""
    # numpy and the store are imported when the command runs: `darkroom --help` stays quick.
    import numpy as np

    from storage import results as stored
    from tasks.phash import group_near_duplicates

    settings = read_settings()
    distance = settings.phash_distance if distance is None else distance
    factory = sessions(settings)
    with factory() as s:
        ids, hashes = [], []
        for image_id, value in stored.PHASHES.all_hashes(s):
            ids.append(image_id)
            hashes.append(value)
        if not ids:
            raise fail("no photo has a perceptual hash yet: the phash task must run first "
                       "(it is in DARKROOM_TASKS by default; `darkroom rerun --task phash` hashes stored photos)")
        packed = np.array(hashes, dtype=np.uint64)
        groups = group_near_duplicates(packed, distance)
        members = [ids[i] for group in groups for i in group]
        names = stored.image_names(s, members)
    found = [{"size": len(group),
              "images": [{"sha256": names[ids[i]][0], "path": names[ids[i]][1], "phash": f"{hashes[i]:016x}"}
                         for i in group]}
             for group in groups]
    if as_json:
        print_json(found)
        return
    if not found:
        out.print(f"no near-duplicates among {len(ids)} photo(s) (distance {distance})", highlight=False)
        return
    width = max(20, out.width - 20)
    for n, group in enumerate(found, 1):
        out.print(f"group {n} ({group['size']} photos)", highlight=False)
        for image in group["images"]:
            where = short_path(image["path"], width) if image["path"] else image["sha256"][:12]
            out.print(f"  {image['phash']}  {where}", highlight=False, markup=False, soft_wrap=True)
    in_groups = sum(g["size"] for g in found)
    out.print(f"{len(found)} group(s), {in_groups} of {len(ids)} photo(s) (distance {distance})", highlight=False)
