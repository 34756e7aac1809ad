"""``softpick convert`` under hostile use: it never deletes or overwrites what it did not write, and bad
inputs end in one line. Every case checks that the run's files are byte-identical afterwards."""

from __future__ import annotations

import errno
import json
import os
import shutil

import pytest
from hostile_utils import refused, run, tree_hashes

from softpick.train.checkpoint import step_dirs


def dcp_to_hf(run_dir, *extra):
    return ["convert", "dcp-to-hf", "--path", run_dir, *extra]


def test_dcp_to_hf_out_onto_the_run_or_its_checkpoints_is_refused(a_run, capsys):
    for out in (a_run, a_run / "checkpoint", a_run / "checkpoint" / "step-4", a_run.parent,
                a_run / "checkpoint" / "step-4" / "hf"):
        for extra in ((), ("--overwrite",)):
            refused(capsys, dcp_to_hf(a_run, "--out", out, *extra), 2, "--out", keep=(a_run,))


def test_dcp_to_hf_out_onto_an_existing_folder_needs_overwrite(a_run, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    refused(capsys, dcp_to_hf(a_run, "--out", mine), 2, "exists and is not empty", "--overwrite", keep=(mine, a_run))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    refused(capsys, dcp_to_hf(a_run, "--out", a_file), 2, "is a file", keep=(a_file,))
    before = tree_hashes(a_run)
    code, lines, err = run(capsys, dcp_to_hf(a_run, "--out", mine, "--overwrite"))
    assert code == 0 and not lines, err[-2000:]
    assert (mine / "config.json").is_file() and not (mine / "notes.txt").exists()
    assert tree_hashes(a_run) == before
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    # the default output is the command's own: converting again replaces it, nothing else
    assert run(capsys, dcp_to_hf(a_run))[0] == 0
    assert run(capsys, dcp_to_hf(a_run))[0] == 0
    assert (a_run / "hf-checkpoints" / "step-4" / "config.json").is_file()


@pytest.mark.parametrize("target", ["step", "dump", "checkpoints"])
def test_hf_to_dcp_never_replaces_a_checkpoint_or_a_run(a_run, capsys, target):
    out = {"step": a_run / "checkpoint" / "step-4", "dump": a_run, "checkpoints": a_run / "checkpoint"}[target]
    for extra in ((), ("--overwrite",)):
        line = refused(capsys, ["convert", "hf-to-dcp", "--model", a_run / "hf", "--checkpoint", out, *extra], 2,
                       "--checkpoint", keep=(a_run,))
        assert "never replaced" in line or "holds the input" in line, line


def test_hf_to_dcp_writes_a_new_step_0_and_refuses_it_the_second_time(a_run, tmp_path, capsys):
    out = tmp_path / "cont" / "checkpoint" / "step-0"
    before = tree_hashes(a_run)
    assert run(capsys, ["convert", "hf-to-dcp", "--model", a_run / "hf", "--checkpoint", out])[0] == 0
    assert step_dirs(out.parent) == {0: out} and tree_hashes(a_run) == before
    refused(capsys, ["convert", "hf-to-dcp", "--model", a_run / "hf", "--checkpoint", out], 2, "never replaced",
            keep=(out,))


def _garbage(folder, name, data=b"\x00\xff garbage \x13" * 40):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("case", ["path_is_a_file", "no_metadata", "garbage_metadata_no_manifest",
                                  "truncated_weights_no_manifest", "empty_folder", "config_garbage"])
def test_dcp_to_hf_on_garbage_is_one_line(a_run, tmp_path, capsys, case):
    step = a_run / "checkpoint" / "step-4"
    path = a_run
    extra = ()
    if case == "path_is_a_file":
        path = a_run / "metrics.jsonl"
    elif case == "no_metadata":
        (step / ".metadata").unlink()
    elif case == "garbage_metadata_no_manifest":
        (step / "manifest.json").unlink()
        (step / ".metadata").write_bytes(b"not a pickle" * 10)
    elif case == "truncated_weights_no_manifest":
        (step / "manifest.json").unlink()
        distcp = next(step.glob("*.distcp"))
        distcp.write_bytes(distcp.read_bytes()[:1000])
    elif case == "empty_folder":
        path = tmp_path / "empty"
        path.mkdir()
    elif case == "config_garbage":
        extra = ("--config", _garbage(tmp_path / "cfg", "config.json"))
    refused(capsys, dcp_to_hf(path, "--out", tmp_path / "out", *extra), 2, keep=(a_run,))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["config_garbage", "weights_garbage", "weights_truncated", "no_weights"])
def test_hf_to_dcp_on_garbage_is_one_line(a_run, tmp_path, capsys, case):
    model = tmp_path / "model"
    shutil.copytree(a_run / "hf", model)
    weights = model / "model.safetensors"
    if case == "config_garbage":
        (model / "config.json").write_bytes(b"{ not json")
    elif case == "weights_garbage":
        weights.write_bytes(os.urandom(4096))
    elif case == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:5000])
    else:
        weights.unlink()
    out = tmp_path / "new" / "step-0"
    refused(capsys, ["convert", "hf-to-dcp", "--model", model, "--checkpoint", out], 2, "--model", keep=(model,))
    assert not out.exists() and not [p for p in out.parent.glob(".*")] if out.parent.exists() else True


@pytest.mark.parametrize("case", ["missing", "not_fla", "garbage_config", "out_is_the_run"])
def test_fla_to_hf_on_garbage_is_one_line(a_run, tmp_path, capsys, case):
    src, out = tmp_path / "fla", tmp_path / "out"
    if case == "not_fla":
        shutil.copytree(a_run / "hf", src)
    elif case == "garbage_config":
        _garbage(src, "config.json")
    elif case == "out_is_the_run":
        shutil.copytree(a_run / "hf", src)
        out = a_run
    refused(capsys, ["convert", "fla-to-hf", src, out], 2, keep=(a_run,))


def test_a_full_disk_during_convert_leaves_nothing_behind(a_run, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing (a fake writer: the tmpfs variant is in test_hostile_train): one line, exit 4,
    no partial folder, the previous --out untouched."""
    import softpick.models.export as export

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "out"
    assert run(capsys, dcp_to_hf(a_run, "--out", out))[0] == 0
    monkeypatch.setattr(export, "write_remote_code", full)
    line = refused(capsys, dcp_to_hf(a_run, "--out", out, "--overwrite"), 4, "no space left", keep=(out, a_run))
    assert "nothing was written" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]


def test_the_manifest_still_guards_the_checkpoint(a_run, tmp_path, capsys):
    step = a_run / "checkpoint" / "step-4"
    manifest = json.loads((step / "manifest.json").read_text())
    assert set(manifest["files"]) == {p.name for p in step.iterdir()} - {"manifest.json"}
    (step / "manifest.json").write_text("{")
    refused(capsys, dcp_to_hf(a_run, "--out", tmp_path / "out"), 2, "manifest.json is not readable", keep=(a_run,))
