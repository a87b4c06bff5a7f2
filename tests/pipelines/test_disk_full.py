"""A stage that fills its disk (ENOSPC while the stage writes, or while its manifest is written)
leaves no manifest, no output directory and no `_tmp/<key>-*` work directory, and its error says
that the disk is full, where, and how much is free there; once there is room a rerun succeeds.

The disk is a real small filesystem: a 2 MiB tmpfs mounted by the test (it needs root and a kernel
that lets this process mount; CI runs the tests as root). Where mounting is not possible the tests
FAIL rather than pass silently, unless OMNIWAY_DISK_FULL_MANUAL=1 says the manual check below was
done instead, in which case they are skipped:

    mkdir /tmp/small && sudo mount -t tmpfs -o size=2m tmpfs /tmp/small
    # a pipeline with `storage: /tmp/small/storage` and a stage that writes more than 2 MiB
    omniway run p.yaml   # -> "... no space left on device while writing stage 'x' (key ...) to
                         #     /tmp/small/storage/<pipeline>/x/_tmp/<key>-...: 0 bytes free on ..."
    ls -a /tmp/small/storage/<pipeline>/x /tmp/small/storage/<pipeline>/x/_tmp   # no <key>/, no <key>-*
    sudo mount -o remount,size=64m /tmp/small && omniway run p.yaml   # now succeeds
    sudo umount /tmp/small
"""

from __future__ import annotations

import errno
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipelines.execute import DiskFullError, execute_stage
from pipelines.registry import stage_kind
from pipelines.storage import MANIFEST_NAME, Storage

MANUAL_ENV = "OMNIWAY_DISK_FULL_MANUAL"
MiB = 1 << 20


@dataclass
class FillConfig:
    mib: float = 3.0          # how much to write into the output directory
    fill_exactly: bool = False  # write until the disk is full, then return (the manifest write fails)


@stage_kind("test-disk-fill", config=FillConfig, version="1",
            description="Write `mib` MiB into the output (or exactly fill the disk).")
def fill(ctx):
    path = os.path.join(ctx.output_dir, "big.bin")
    block = b"\0" * 4096
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        if ctx.config.fill_exactly:
            while True:
                try:
                    written += os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break  # the disk is exactly full: the stage itself succeeded
        else:
            with open(fd, "wb", closefd=False) as f:  # buffered, as a stage would write
                while written < ctx.config.mib * MiB:
                    written += f.write(block * 16)
    finally:
        os.close(fd)
    return {"bytes": written}


def _mount_tmpfs(where: Path, size: str) -> str | None:
    """Mount a tmpfs of `size` on `where`; None on success, else why not."""
    if os.geteuid() != 0:
        return f"not root (euid {os.geteuid()})"
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -t tmpfs failed: {(proc.stderr or proc.stdout).strip()}"
    return None


def _remount(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True,
                   capture_output=True, text=True)


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs mounted on a fresh directory (unmounted afterwards, whatever happened)."""
    where = tmp_path / "small"
    where.mkdir()
    why_not = _mount_tmpfs(where, "2m")
    if why_not is not None:
        if os.environ.get(MANUAL_ENV) == "1":
            pytest.skip(f"cannot mount a small filesystem here ({why_not}); {MANUAL_ENV}=1 says the "
                        "manual check in this module's docstring was done instead")
        pytest.fail(f"cannot mount a small filesystem here ({why_not}): run this test as root on a machine "
                    f"that allows `mount -t tmpfs`, or do the manual check in {__file__}'s docstring and "
                    f"set {MANUAL_ENV}=1", pytrace=False)
    try:
        assert os.path.ismount(where)
        yield where
    finally:
        proc = subprocess.run(["umount", str(where)], capture_output=True, text=True)
        if proc.returncode != 0:  # something still holds it open: detach it anyway
            subprocess.run(["umount", "-l", str(where)], capture_output=True, text=True)


def _run(storage: Storage, key: str, config: FillConfig) -> dict:
    return execute_stage(pipeline="p", stage="fill", kind="test-disk-fill", key=key, config=config,
                         config_dict={"mib": config.mib, "fill_exactly": config.fill_exactly},
                         inputs={}, storage=storage)


def _assert_nothing_left(storage: Storage, key: str) -> None:
    stage_dir = Path(storage.stage_dir("p", "fill"))
    out = Path(storage.output_dir("p", "fill", key))
    assert not out.exists(), f"an output directory was left: {sorted(out.rglob('*'))}"
    assert storage.read_manifest(str(out)) is None
    leftovers = sorted(stage_dir.glob(f"_tmp/{key}-*")) + sorted(stage_dir.glob("_tmp/replaced-*"))
    assert not leftovers, f"work directories were left: {leftovers}"
    assert not list(stage_dir.glob(f"_tmp/**/{MANIFEST_NAME}*")), "a (partial) manifest was left"
    assert key not in storage.list_keys("p", "fill")


def _assert_disk_full_error(err: DiskFullError, storage: Storage, key: str) -> str:
    message = str(err)
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert "no space left on device" in message
    assert "'fill'" in message and key in message
    assert f"{storage.stage_dir('p', 'fill')}/_tmp/{key}-" in message  # the work dir: where it was writing
    assert f"free on {storage.root}" in message  # the filesystem, and the space free there
    assert "rerun" in message
    cause = err.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC  # the original is chained
    return message


def test_a_stage_that_fills_the_disk_leaves_nothing_and_says_so(small_disk):
    storage = Storage(str(small_disk / "storage"))
    # a cached output of another key on the same disk stays as it was
    kept = _run(storage, "kept", FillConfig(mib=0.25))
    with pytest.raises(DiskFullError) as info:
        _run(storage, "big", FillConfig(mib=3.0))
    message = _assert_disk_full_error(info.value, storage, "big")
    assert "0 bytes free" in message or "KiB free" in message  # measured when the write failed
    print(message)
    _assert_nothing_left(storage, "big")
    assert storage.read_manifest(storage.output_dir("p", "fill", "kept")) == kept

    _remount(small_disk, "8m")  # room now: the same stage succeeds
    data = _run(storage, "big", FillConfig(mib=3.0))
    assert data["metrics"] == {"bytes": 3 * MiB}
    out = Path(storage.output_dir("p", "fill", "big"))
    assert (out / "big.bin").stat().st_size == 3 * MiB
    assert storage.read_manifest(str(out)) == data
    assert not list(Path(storage.stage_dir("p", "fill")).glob("_tmp/big-*"))


def test_a_full_disk_while_the_manifest_is_written_leaves_no_partial_manifest(small_disk):
    storage = Storage(str(small_disk / "storage"))
    ballast = small_disk / "ballast.bin"
    ballast.write_bytes(b"\0" * (MiB // 2))
    # the stage's data exactly fills the disk and the stage returns; the manifest then has no room
    with pytest.raises(DiskFullError) as info:
        _run(storage, "tight", FillConfig(fill_exactly=True))
    message = _assert_disk_full_error(info.value, storage, "tight")
    assert "0 bytes free" in message
    assert "once its partial output was removed" in message  # and what is free now
    print(message)
    tb = info.value.__cause__.__traceback__
    while tb.tb_next:
        tb = tb.tb_next
    assert tb.tb_frame.f_code.co_name == "commit", "expected the failure in Storage.commit's manifest write"
    _assert_nothing_left(storage, "tight")

    ballast.unlink()  # free some space: a rerun (that does not fill the disk) succeeds
    data = _run(storage, "tight", FillConfig(mib=1.0))
    assert storage.read_manifest(storage.output_dir("p", "fill", "tight")) == data
    assert storage.list_keys("p", "fill") == ["tight"]


def test_a_full_disk_before_the_work_directory_exists(small_disk):
    storage = Storage(str(small_disk / "storage"))
    os.makedirs(storage.stage_dir("p", "fill"))
    # tmpfs directories take an inode, no block: leave no free inode, so `_tmp` cannot be made
    st = os.statvfs(small_disk)
    _remount(small_disk, f"2m,nr_inodes={st.f_files - st.f_ffree}")
    with pytest.raises(OSError) as probe:
        os.mkdir(small_disk / "probe")
    assert probe.value.errno == errno.ENOSPC
    with pytest.raises(DiskFullError) as info:
        _run(storage, "none", FillConfig(mib=0.1))
    message = str(info.value)
    assert "no space left on device" in message and storage.stage_dir("p", "fill") in message
    assert f"free on {storage.root}" in message and "no free inodes" in message
    print(message)
    assert not list(Path(storage.stage_dir("p", "fill")).glob("_tmp/none-*"))
    assert not Path(storage.output_dir("p", "fill", "none")).exists()
