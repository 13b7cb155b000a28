"""Bad and odd input through the whole pipeline: every file ends in a terminal state you can query.

Bad files end ``rejected`` with a reason that names them, with no retry loop; valid but odd images
(CMYK, 16-bit, palette, animated, rotated, odd names) are processed, not rejected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.harness import Darkroom
from tests.photos import png_declaring

pytestmark = pytest.mark.e2e


@pytest.fixture()
def inbox_matrix(tmp_path, photos) -> tuple[Path, dict[str, str]]:
    """Files of every kind, with the state each must end in."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    astro = Image.open(photos["astronaut"])
    small = astro.resize((300, 200))
    expected: dict[str, str] = {}

    def put(name: str, data: bytes | None, state: str, image: Image.Image | None = None, **save) -> None:
        path = inbox / name
        if image is not None:
            image.save(path, **save)
        else:
            path.write_bytes(data)
        expected[name] = state

    put("empty.jpg", b"", "rejected")
    put("truncated.jpg", photos["rocket"].read_bytes()[: photos["rocket"].stat().st_size // 2], "rejected")
    put("random.jpg", os.urandom(4096), "rejected")
    put("notes.txt", b"shopping list\n", "rejected")
    put("bomb.png", png_declaring(30000, 30000), "rejected")
    put("too-many-pixels.png", None, "rejected", Image.new("RGB", (2100, 1000)), format="PNG")
    put("cmyk.jpg", None, "done", small.convert("CMYK"), format="JPEG")
    put("deep16.png", None, "done", Image.fromarray(np.arange(200 * 300, dtype=np.uint16).reshape(200, 300) * 7))
    put("gray.png", None, "done", small.convert("L"), format="PNG")
    put("rgba.png", None, "done", small.convert("RGBA"), format="PNG")
    put("palette.png", None, "done", small.convert("P"), format="PNG")
    frames = [small, small.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    put("anim.gif", None, "done", frames[0], format="GIF", save_all=True, append_images=frames[1:], duration=100)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    put("rotated.jpg", None, "done", small, format="JPEG", exif=exif.tobytes())
    put("photo.webp", None, "done", small, format="WEBP")
    put("photo.tiff", None, "done", small, format="TIFF")
    for name in ("with space.jpg", "ünïcødé 写真.jpg", "new\nline.jpg", "-leading-dash.jpg"):
        put(name, None, "done", small.rotate(len(name)), format="JPEG")
    (inbox / "folder.jpg").mkdir()  # a directory named like an image: its contents count, it does not
    put("folder.jpg/inside.jpg", None, "done", small.rotate(7), format="JPEG")
    outside = tmp_path / "outside.jpg"
    small.save(outside)
    (inbox / "link-out.jpg").symlink_to(outside)
    expected["link-out.jpg"] = "refused"
    return inbox, expected


def test_every_file_ends_in_a_terminal_state(tmp_path, redis_url, inbox_matrix):
    inbox, expected = inbox_matrix
    dr = Darkroom(tmp_path, redis_url, f"sqlite:///{tmp_path / 'darkroom.db'}", tasks="normalize",
                  max_image_pixels="2000000")
    done = dr.run("up", str(inbox), "--exit-when-idle", timeout=300)
    assert done.returncode == 3, done.stderr  # finished, with files rejected and refused
    results = dr.results()
    got = {}
    for r in results:
        for p in r["paths"]:
            got[str(Path(p).relative_to(inbox))] = r
    for name, state in expected.items():
        if state == "refused":
            continue
        assert name in got, f"{name!r} was lost"
        assert got[name]["status"] == state, (name, got[name]["errors"])
        if state == "rejected":
            reason = next(iter(got[name]["errors"].values()))
            assert Path(name).name in reason, reason  # the reason names the file
    assert "pixel" in next(iter(got["too-many-pixels.png"]["errors"].values())).lower()
    assert "pixel" in next(iter(got["bomb.png"]["errors"].values())).lower()
    assert (got["rotated.jpg"]["width"], got["rotated.jpg"]["height"]) == (200, 300)  # orientation applied
    assert got["gray.png"]["normalize"]["dtype"] == "uint8"
    # The symlink out of the inbox was refused, and says so
    status = json.loads(dr.run("status", "--json").stdout)
    refused = [p for p in status["problems"] if p["path"].endswith("link-out.jpg")]
    assert refused and "outside the watched folder" in refused[0]["reason"]
    # Rejection is final: nothing was retried
    assert all(n == 0 for key, n in status["runs"].items() if key.endswith(":queued") or key.endswith(":running"))
    truncated_attempts = [p["attempts"] for p in status["problems"] if p["path"].endswith("truncated.jpg")]
    assert truncated_attempts in ([1], [0])
    # Export names come from hashes alone: odd file names cannot steer a write
    export = tmp_path / "export"
    assert dr.run("export", str(export)).returncode == 0
    written = [p for p in export.rglob("*") if p.is_file()]
    assert written and all(p.parent.parent == export and len(p.parent.name) == 64 for p in written)
