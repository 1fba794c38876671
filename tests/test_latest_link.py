"""``<parent>/latest`` points at the newest finished run, and never replaces a ``latest`` that is not bindspace's
(a run folder can sit anywhere: ``hydra.run.dir=~/exp1`` must not redirect the user's own ``~/latest``)."""

from __future__ import annotations

import os

from bindspace.utils.run_folder import link_latest


def run_folder(path):
    (path / ".hydra").mkdir(parents=True)
    return path


def test_latest_follows_the_newest_run_and_a_deleted_one(tmp_path):
    first, second = run_folder(tmp_path / "first"), run_folder(tmp_path / "second")
    assert link_latest(first) == tmp_path / "latest" and os.readlink(tmp_path / "latest") == "first"
    assert link_latest(second) and os.readlink(tmp_path / "latest") == "second"
    (second / ".hydra").rmdir()
    second.rmdir()  # the run it named was deleted: the link is still bindspace's to move
    third = run_folder(tmp_path / "third")
    assert link_latest(third) and (tmp_path / "latest").resolve() == third.resolve()


def test_a_latest_that_is_not_bindspaces_is_left_alone(tmp_path):
    run = run_folder(tmp_path / "exp1")
    (tmp_path / "projects" / "paper").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    for target in ("projects/paper", "mine", str(tmp_path / "projects")):  # deeper, a plain folder, absolute
        (tmp_path / "latest").unlink(missing_ok=True)
        (tmp_path / "latest").symlink_to(target)
        assert link_latest(run) is None and os.readlink(tmp_path / "latest") == target
    (tmp_path / "latest").unlink()
    (tmp_path / "latest").mkdir()  # a real folder of that name
    assert link_latest(run) is None and (tmp_path / "latest").is_dir() and not (tmp_path / "latest").is_symlink()
