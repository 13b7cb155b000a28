"""darkroom.settings: values that are refused when the settings are read, with the setting named.

Each task's options are checked by the task's own parser (``tasks.normalize.parse_mode``,
``tasks.augment.parse_spec``), so a bad ``DARKROOM_*`` value stops Darkroom before any photo is taken.
"""

from __future__ import annotations

import pytest

from darkroom.settings import Settings


@pytest.mark.parametrize("bad", ["whiten", "scale:per_channel", "center:sideways"])
def test_bad_normalize_modes_are_refused_by_settings(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="normalize_modes"):
        Settings(normalize_modes=bad)


def test_settings_reject_a_bad_augment_spec():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="spin"):
        Settings(augment="spin=90")
    with pytest.raises(ValidationError, match="shear"):
        Settings(augment="shear=95")


@pytest.mark.parametrize("bad, reason", [("", "no task given"), ("classify,sharpen", "unknown task 'sharpen'")])
def test_tasks_must_name_known_tasks_and_at_least_one(bad, reason):
    """Every image gets its runs with it: an empty task list would leave images with nothing to do."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=reason):
        Settings(tasks=bad)
    assert Settings(tasks="phash, classify,phash").tasks == ["phash", "classify"]
