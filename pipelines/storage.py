"""Where stage outputs live: a local directory or any `pyarrow.fs` URI.

Layout: `<root>/<pipeline>/<stage>/<key>/` holds a committed output, with
`_manifest.json` inside; `<root>/<pipeline>/<stage>/_tmp/` holds outputs being
written. A stage always writes into a local directory. On local storage the
commit is one `rename` of that directory onto `<key>/`, so a reader sees either
nothing or the complete output. On a URI (`s3://`, `gs://`, `file://`, ...) the commit
uploads every file and the manifest last: a directory without a manifest does
not exist for the runner. The manifest records the mtimes the filesystem reports for the uploaded files.

A plain local path is served with `os` alone so that planning a fully cached run
does not pay for importing pyarrow.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# shutil, tempfile and uuid are imported where writes happen: planning a
# cached run only reads.

MANIFEST_NAME = "_manifest.json"


def _is_uri(root: str) -> bool:
    return "://" in root


class Storage:
    """A storage root.

    Args:
        root: a local path (relative paths resolve against the current directory)
            or a URI that `pyarrow.fs.FileSystem.from_uri` understands.
    """

    def __init__(self, root: str):
        self.uri_root = root
        if _is_uri(root):
            import pyarrow.fs as pafs

            self._fs, self.root = pafs.FileSystem.from_uri(root)
            self.local = False
        else:
            self._fs = None
            self.root = str(Path(root).expanduser().resolve())
            self.local = True

    def __repr__(self) -> str:
        return f"Storage({self.uri_root!r})"

    def __reduce__(self):  # ship by root only; filesystems rebuild on the worker
        return (Storage, (self.uri_root if not self.local else self.root,))

    # -- paths -------------------------------------------------------------
    def stage_dir(self, pipeline: str, stage: str) -> str:
        return f"{self.root}/{pipeline}/{stage}"

    def output_dir(self, pipeline: str, stage: str, key: str) -> str:
        return f"{self.stage_dir(pipeline, stage)}/{key}"

    def uri(self, path: str) -> str:
        """A path inside this storage as something a user can paste."""
        if self.local:
            return path
        scheme = self.uri_root.split("://", 1)[0]
        return f"{scheme}://{path}"

    # -- reads -------------------------------------------------------------
    def read_text(self, path: str) -> str | None:
        if self.local:
            try:
                return Path(path).read_text()
            except FileNotFoundError:
                return None
        import pyarrow.fs as pafs

        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as f:
            return f.read().decode()

    def read_manifest(self, output_dir: str) -> dict | None:
        text = self.read_text(f"{output_dir}/{MANIFEST_NAME}")
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            # A torn manifest cannot come from this code (it renames into
            # place), but a hand-edited one can: treat it as absent.
            return None

    def list_keys(self, pipeline: str, stage: str) -> list[str]:
        base = self.stage_dir(pipeline, stage)
        if self.local:
            if not os.path.isdir(base):
                return []
            return sorted(n for n in os.listdir(base) if not n.startswith("_"))
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith("_"))

    def open_input(self, path: str):
        if self.local:
            return open(path, "rb")
        return self._fs.open_input_file(path)

    def file_state(self, path: str) -> tuple[int, int] | None:
        """(size, mtime in ns) of a file, None when there is none: one stat call, no reading."""
        if self.local:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                return None
            return (st.st_size, st.st_mtime_ns) if not os.path.isdir(path) else None
        import pyarrow.fs as pafs

        info = self._fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            return None
        return int(info.size), int(info.mtime_ns or 0)

    def sha256(self, path: str) -> str:
        """sha256 of a file's bytes, read in 1 MiB blocks."""
        import hashlib

        h = hashlib.sha256()
        with self.open_input(path) as f:
            while block := f.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    def write_manifest(self, output_dir: str, manifest: dict) -> None:
        """Replace a committed output's manifest (atomically where the filesystem allows): for facts about
        the same files, such as the refreshed mtimes of a touched but unchanged file."""
        text = json.dumps(manifest, indent=2, sort_keys=True)
        path = f"{output_dir}/{MANIFEST_NAME}"
        if self.local:
            tmp = f"{path}.tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            return
        with self._fs.open_output_stream(path) as f:
            f.write(text.encode())

    # -- writes ------------------------------------------------------------
    def new_work_dir(self, pipeline: str, stage: str, key: str) -> str:
        """A fresh local directory for a stage to write into."""
        import tempfile
        import uuid

        if self.local:
            tmp_root = f"{self.stage_dir(pipeline, stage)}/_tmp"
            os.makedirs(tmp_root, exist_ok=True)
            path = f"{tmp_root}/{key}-{uuid.uuid4().hex[:12]}"
            os.makedirs(path)
            return path
        return tempfile.mkdtemp(prefix=f"omniway-{stage}-{key}-")

    def commit(self, work_dir: str, output_dir: str, manifest: dict, replace: bool = False) -> bool:
        """Publish `work_dir` as `output_dir` with `manifest` written last.

        Returns False when another run committed the same key first; that
        output is equivalent (same key) and is kept. With `replace` (a forced
        rerun: the user asked for a new output, e.g. retrained weights) the
        existing output is replaced instead.
        """
        import shutil

        if not self.local:
            return self._commit_remote(work_dir, output_dir, manifest, replace)
        text = json.dumps(manifest, indent=2, sort_keys=True)
        if replace and os.path.exists(f"{output_dir}/{MANIFEST_NAME}"):
            # move the old output aside (same filesystem: an atomic rename), then drop it
            old = os.path.join(os.path.dirname(work_dir), "replaced-" + os.path.basename(work_dir))
            os.rename(output_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        tmp_manifest = f"{work_dir}/{MANIFEST_NAME}.tmp"
        try:
            with open(tmp_manifest, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_manifest, f"{work_dir}/{MANIFEST_NAME}")
        except BaseException:
            # a full disk (or anything else) mid-write: no torn manifest is left, not even the .tmp
            try:
                os.unlink(tmp_manifest)
            except OSError:
                pass
            raise
        if os.path.isdir(output_dir) and not os.path.exists(f"{output_dir}/{MANIFEST_NAME}"):
            # Left by a writer of an older layout or a hand copy: not an output.
            shutil.rmtree(output_dir, ignore_errors=True)
        try:
            os.rename(work_dir, output_dir)
        except OSError:
            if os.path.exists(f"{output_dir}/{MANIFEST_NAME}"):
                shutil.rmtree(work_dir, ignore_errors=True)
                return False
            # not published: the work directory must not look like an output (the caller removes it)
            try:
                os.unlink(f"{work_dir}/{MANIFEST_NAME}")
            except OSError:
                pass
            raise
        return True

    def _commit_remote(self, work_dir: str, output_dir: str, manifest: dict, replace: bool = False) -> bool:
        """Upload ``work_dir`` to ``output_dir``, then the manifest. Each file's ``mtime_ns`` in the manifest
        becomes the one the filesystem reports for its uploaded copy (not the local file's): what
        pipelines.integrity compares, so the first check after the commit hashes nothing again."""
        import shutil

        if self.read_manifest(output_dir) is not None:
            if not replace:
                shutil.rmtree(work_dir, ignore_errors=True)
                return False
            # the manifest goes first: from then on the old output reads as absent, never as half-replaced
            self._fs.delete_file(f"{output_dir}/{MANIFEST_NAME}")
            self._fs.delete_dir(output_dir)
        self._fs.create_dir(output_dir, recursive=True)
        for dirpath, _, files in os.walk(work_dir):
            for name in files:
                local = os.path.join(dirpath, name)
                rel = os.path.relpath(local, work_dir)
                dest = f"{output_dir}/{rel}"
                self._fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
                with open(local, "rb") as src, self._fs.open_output_stream(dest) as out:
                    shutil.copyfileobj(src, out, 1 << 20)
        for entry in manifest.get("files", []):
            state = self.file_state(f"{output_dir}/{entry['path']}")
            if state is not None and state[0] == entry["size"]:  # (another size: the check reports it)
                entry["mtime_ns"] = state[1]
        with self._fs.open_output_stream(f"{output_dir}/{MANIFEST_NAME}") as out:
            out.write(json.dumps(manifest, indent=2, sort_keys=True).encode())
        shutil.rmtree(work_dir, ignore_errors=True)
        return True

    def discard(self, work_dir: str) -> None:
        import shutil

        shutil.rmtree(work_dir, ignore_errors=True)

    def clean_tmp(self, pipeline: str, stage: str, older_than_s: float = 24 * 3600) -> None:
        """Remove abandoned work directories (a killed driver leaves them)."""
        if not self.local:
            return
        import shutil
        import time

        tmp_root = f"{self.stage_dir(pipeline, stage)}/_tmp"
        if not os.path.isdir(tmp_root):
            return
        now = time.time()
        for name in os.listdir(tmp_root):
            path = f"{tmp_root}/{name}"
            try:
                if now - os.path.getmtime(path) > older_than_s:
                    shutil.rmtree(path, ignore_errors=True)
            except FileNotFoundError:
                pass
