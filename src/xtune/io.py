"""Writing files and directories so that neither a killed process nor a crash of the machine leaves half of one
behind, and a full disk says so.

Everything is written under a temporary name, flushed to the disk (fsync) and renamed into place, and the rename is
flushed too: without the flushes a power loss after the rename can leave a "complete" directory of empty files.
Written files get the permissions the user's umask gives new files, whatever the library that wrote them chose
(safetensors creates 0600 files, torch.save and datasets 0644).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from xtune.errors import XtuneError

# .NAME.tmp-PID: being written by process PID; .NAME.old-PID: the version it replaces, until the rename is done
TEMPORARY_RE = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")


class DiskFullError(XtuneError):
    pass


def user_cache_dir() -> Path:
    """Where xtune keeps what it can rebuild (tokenized data, chat history): $XTUNE_CACHE or ~/.cache/xtune."""
    return Path(os.environ.get("XTUNE_CACHE") or Path.home() / ".cache" / "xtune")


def write_atomically(final: Path, write: Callable[[Path], object], needed_bytes: int | None = None) -> Path:
    """Let `write` fill a temporary directory next to `final`, then flush and rename it into place. `needed_bytes`,
    when known, is what a full disk's error says the write needs."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        commit_directory(tmp, final)
    except BaseException as error:
        disk_full = _disk_full(error, tmp)
        written = _tree_bytes(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if disk_full:
            raise DiskFullError(_disk_full_message(final, written, needed_bytes)) from error
        raise
    return final


def commit_directory(tmp: Path, final: Path) -> None:
    """Flush the finished directory `tmp` and rename it to `final`, replacing any earlier version whole."""
    settle_tree(tmp)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        final.rename(old)
        tmp.rename(final)
        fsync_directory(final.parent)
        shutil.rmtree(old)
    else:
        tmp.rename(final)
        fsync_directory(final.parent)


def write_text_atomically(path: Path, text: str) -> Path:
    return write_file_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), len(text.encode()))


def write_file_atomically(path: Path, write: Callable[[Path], object], needed_bytes: int | None = None) -> Path:
    """Let `write` create the file at a temporary path next to `path`, then flush and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as error:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _disk_full(error, path.parent):
            raise DiskFullError(_disk_full_message(path, written, needed_bytes)) from error
        raise
    fsync_directory(path.parent)
    return path


def settle_tree(root: Path) -> None:
    """Give every file under `root` the umask's permissions and flush files, then directories, to the disk."""
    file_mode, dir_mode = 0o666 & ~_umask(), 0o777 & ~_umask()
    for directory, _, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if os.stat(path).st_mode & 0o777 != file_mode:
                os.chmod(path, file_mode)
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        if directory != str(root) and os.stat(directory).st_mode & 0o777 != dir_mode:
            os.chmod(directory, dir_mode)
        fsync_directory(Path(directory))


def fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (a rename into it, a new file) to the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: Path) -> list[str]:
    """Clean up after writers of `directory` that died mid-write: remove their temporary directories and files, and
    put back a previous version that a writer had moved aside but not yet replaced. Leaves alone what a live process
    is writing. Returns what it did, one line per entry."""
    done = []
    if not Path(directory).is_dir():
        return done
    for entry in sorted(Path(directory).iterdir()):
        match = TEMPORARY_RE.match(entry.name)
        if not match or _alive(int(match["pid"])):
            continue
        original = entry.with_name(match["name"])
        if match["kind"] == "old" and not original.exists():
            entry.rename(original)  # killed between its two renames: this is the last complete version
            done.append(f"restored {original.name} from {entry.name}")
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        done.append(f"removed {entry.name}")
    return done


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _disk_full(error: BaseException, where: Path) -> bool:
    """Whether `error` came from a full disk. Libraries lose the errno: safetensors says "No space left on device
    (os error 28)", torch.save only "unexpected pos 576 vs 534"; so a write error with no room left counts too."""
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        return True
    if not isinstance(error, Exception) or isinstance(error, XtuneError):
        return False
    if "No space left on device" in str(error):
        return True
    try:
        return shutil.disk_usage(where if where.exists() else where.parent).free < 1 << 20
    except OSError:
        return False


def _tree_bytes(root: Path) -> int:
    if root.is_file():
        return root.stat().st_size
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _disk_full_message(final: Path, written: int, needed: int | None) -> str:
    free = shutil.disk_usage(final.parent).free
    needs = f"it needs about {_size(needed)}" if needed else f"{_size(written)} were written before the disk filled"
    return (
        f"no space left in {final.parent} while writing {final.name}: {needs}, {_size(free)} free now; "
        "free some space (or point the work dir elsewhere) and run again (`--resume` continues a training run)"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
