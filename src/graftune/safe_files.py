"""Files inside one folder graftune owns (a run, a study, an export): the one place that writes, reads and
deletes them, so that a folder someone sent, with links planted in it, can never make graftune touch anything
outside it.

- Every path is checked to lie below the folder with no symbolic link on the way (`check`); a whole received
  folder is checked once before a command works on it (`refuse_links`). The folder itself may be a link: the
  user named it.
- Files are written under a fresh temporary name that `mkstemp` creates exclusively (a planted file or link of
  that name cannot be reused) and renamed into place; a rename replaces a link, never what it points to.
- Reads open with O_NOFOLLOW.
- Deletions remove only what graftune wrote: with a manifest (a run folder's `.graftune-files`, one relative
  path a line), a folder goes only when every file in it is recorded there; temporary folders made here are
  recorded as whole folders. `shutil.rmtree` itself never follows a link inside the tree it removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from graftune.errors import UserError

WHOLE = "/"  # a manifest line ending in it records a temporary folder as graftune's, whatever it holds


class Confined:
    """The folder `root` (a run, a study, an export); `manifest` names the file that records what graftune
    wrote there, for folders whose deletion must spare what a user added (run folders)."""

    def __init__(self, root: str | Path, what: str = "run folder", manifest: str | None = None) -> None:
        self.root, self.what = Path(root), what
        self.manifest = self.root / manifest if manifest else None
        self._absolute = Path(os.path.abspath(self.root))  # paths compare as absolute ones, '..' resolved

    def relative(self, path: str | Path) -> str:
        """`path` relative to the folder (POSIX form); ValueError when it lies outside."""
        return Path(os.path.abspath(path)).relative_to(self._absolute).as_posix()

    # --- checks ------------------------------------------------------------------------------------------

    def check(self, path: str | Path) -> Path:
        """`path`, after checking that it lies below the folder and that no part of it that exists is a link."""
        path = Path(path)
        if ".." in path.parts:
            raise UserError(f"{path}: leaves the {self.what} {self.root} through '..'; refused.")
        try:
            parts = Path(self.relative(path)).parts
        except ValueError:
            raise UserError(f"{path}: outside the {self.what} {self.root}; graftune writes only inside it.") from None
        current = self._absolute
        for part in parts:
            current = current / part
            if current.is_symlink():
                raise self._link_error(current)
            if not current.exists():
                break
        return path

    def refuse_links(self) -> None:
        """Refuse the folder when a symbolic link lies anywhere in it, naming the first (a received folder)."""
        for path in self.walk(folders=True):
            if path.is_symlink():
                raise self._link_error(path)

    def _link_error(self, path: Path) -> UserError:
        try:
            target = f" (to {os.readlink(path)})"
        except OSError:
            target = ""
        return UserError(f"{path}: a symbolic link{target} inside the {self.what} {self.root}; graftune never "
                         "follows links in folders it writes, so it stops here. Replace the link with the real "
                         "file or folder, or remove it, and run the command again.")

    def walk(self, folders: bool = False) -> Iterator[Path]:
        """Every file below the folder (and every folder, with `folders`), never entering a linked folder: a
        link, to a file or a folder, is listed as a file."""
        for top, subfolders, files in os.walk(self.root):
            base = Path(top)
            links = [name for name in subfolders if (base / name).is_symlink()]
            subfolders[:] = [name for name in subfolders if name not in links]
            yield from (base / name for name in [*files, *links])
            if folders:
                yield from (base / name for name in subfolders)

    # --- writing -----------------------------------------------------------------------------------------

    def mkdir(self, folder: str | Path) -> Path:
        """`mkdir -p` inside the folder, every level checked."""
        folder = self.check(folder)
        self.root.mkdir(parents=True, exist_ok=True)  # the folder itself: named by the user, or made by graftune
        missing = []
        current = folder
        while current != self.root and not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            path.mkdir(exist_ok=True)
            self.check(path)
        return folder

    def write_bytes(self, path: str | Path, data: bytes, durable: bool = False) -> Path:
        """Write `data` to `path` atomically (temporary name, then rename); `durable` fsyncs file and folder."""
        path = self.check(path)
        self.mkdir(path.parent)
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        if durable:
            fsync_folder(path.parent)
        self.record(path)
        return path

    def write_text(self, path: str | Path, text: str, durable: bool = False) -> Path:
        return self.write_bytes(path, text.encode("utf-8"), durable)

    def temporary_folder(self, parent: str | Path, name: str) -> Path:
        """A new, empty folder with a unique hidden name beside `parent / name`, recorded as graftune's whole."""
        parent = self.mkdir(parent)
        folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=parent))
        self.record(folder, whole=True)
        return folder

    def link_or_copy(self, source: Path, target: Path) -> None:
        """Make `target` hold what `source` holds now: a hard link where the file system has them, else a copy."""
        target = self.check(target)
        self.mkdir(target.parent)
        temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
        try:
            try:
                os.link(self.check(source), temporary / target.name)
            except OSError:
                shutil.copyfile(source, temporary / target.name, follow_symlinks=False)
            os.replace(temporary / target.name, target)
        finally:
            shutil.rmtree(temporary, ignore_errors=True)
        self.record(target)

    def replace_folder(self, staged: Path, final: Path) -> None:
        """Put `staged` (a folder written here under a temporary name) in place of `final`, which may exist and
        must then be graftune's; every file of the new folder is recorded."""
        self.check(staged)
        final = self.check(final)
        if final.exists() or final.is_symlink():
            old = self.temporary_folder(final.parent, f"{final.name}.old")
            os.replace(final, old / final.name)
            self.remove(old)
        os.replace(staged, final)
        self.adopt(final)

    # --- reading -----------------------------------------------------------------------------------------

    def read_bytes(self, path: str | Path) -> bytes:
        """The bytes of a file in the folder, never through a link (FileNotFoundError when it is not there)."""
        path = self.check(path)
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            if path.is_symlink():
                raise self._link_error(path) from None
            raise err
        with os.fdopen(descriptor, "rb") as handle:
            return handle.read()

    def read_text(self, path: str | Path) -> str:
        return self.read_bytes(path).decode("utf-8")

    # --- what graftune wrote ------------------------------------------------------------------------------

    def record(self, path: Path, whole: bool = False) -> None:
        """Add `path` to the manifest (a folder with `whole`: everything in it is graftune's)."""
        if self.manifest is not None and path != self.manifest:
            self._append([self.relative(path) + (WHOLE if whole else "")])

    def adopt(self, folder: Path) -> None:
        """Record every file in `folder`, which graftune (or a library it called) has just written whole."""
        if self.manifest is not None:
            self._append([self.relative(path) for path in Confined(folder, self.what).walk() if not path.is_symlink()])

    def _append(self, lines: list[str]) -> None:
        assert self.manifest is not None
        self.check(self.manifest)
        descriptor = os.open(self.manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))

    def recorded(self) -> tuple[set[str], set[str]]:
        """(files, whole folders) the manifest names, as paths relative to the folder."""
        if self.manifest is None or not self.manifest.is_file():
            return set(), set()
        lines = self.read_text(self.manifest).splitlines()
        return ({line for line in lines if line and not line.endswith(WHOLE)},
                {line.removesuffix(WHOLE) for line in lines if line.endswith(WHOLE)})

    def foreign(self, below: Path | None = None, spared: frozenset[str] = frozenset()) -> list[str]:
        """Files below `below` (default: the whole folder) that graftune did not write, and every link, as paths
        relative to the folder; `spared` names files that count as graftune's anyway."""
        files, wholes = self.recorded()
        found = []
        for path in Confined(below or self.root, self.what).walk():
            name = self.relative(path)
            if path.is_symlink():  # never graftune's, whatever name it has
                found.append(name)
                continue
            if path == self.manifest or name in files or name in spared:
                continue
            if any(name.startswith(whole + "/") for whole in wholes):
                continue
            found.append(name)
        return sorted(found)

    def remove(self, path: str | Path) -> bool:
        """Delete `path` when it is graftune's (a recorded file, a recorded whole folder, or a folder every file of
        which is recorded); True when removed. A link is neither removed nor followed."""
        path = Path(path)
        if path.is_symlink() or not path.exists():
            return False
        self.check(path)
        relative = self.relative(path)
        if self.manifest is not None:
            files, wholes = self.recorded()
            owned = relative in files or relative in wholes or any(relative.startswith(w + "/") for w in wholes)
            if not owned and (path.is_file() or self.foreign(path)):
                return False
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True


def fsync_folder(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
