"""What one tenant can do to its own tree, as blocking calls (``sftp.py`` runs them in threads).

The client sees a virtual tree::

    /             lists the four areas below
    /inbox/       files may be written, renamed and removed; nothing else
    /results/ /exports/ /archive/   read-only

Client paths are text: they are normalised against ``/`` (so ``..`` cannot climb out), split into an
area and a name, and only then joined onto the tenant root. Symlinks are never followed: the final
component is opened with ``O_NOFOLLOW``/``lstat``, and the directory holding it must resolve (via
``realpath``) inside the same area. Errors are ``OSError`` with an errno asyncssh maps to an SFTP
status and a message written for the client.

An upload is written to a staging file outside the visible tree and moved into ``inbox/`` only by
:meth:`TenantFS.commit`; :meth:`TenantFS.discard` throws it away. An upload whose connection dropped
is kept by :meth:`TenantFS.keep_partial` as a *partial* (``staging/partial/<tenant>/<name>``), still
invisible, for the resume window: a ``stat`` of its name shows the partial's size and an open of the
name without truncation continues it (``sftp reput``, ``lftp put -c``); only a normal close of that
upload publishes it.

Attribute changes (setstat) are accepted and ignored, except the times of a tenant's own inbox file,
which are applied; the times of an open upload are applied when it is committed.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import secrets
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from orgsyncd.paths import VISIBLE_DIRS, atomic_replace, partial_dir, staging_dir, tenant_dirs

WRITABLE_AREA = "inbox"
STAGING_SUFFIX = ".upload"
UPLOAD_MODE = 0o640
_NAME_MAX = 255
# The most one read request may ask for (asyncssh's own limit on a read reply).
MAX_READ = 4 * 1024 * 1024
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STAGING_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CLAIMED_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# (atime_ns, mtime_ns), either None when the client did not set it.
Times = tuple[int | None, int | None]


@dataclass(frozen=True, slots=True)
class OpenMode:
    """The parts of SFTP open flags we act on."""

    read: bool = False
    write: bool = False
    create: bool = False
    truncate: bool = False
    exclusive: bool = False
    append: bool = False


@dataclass(frozen=True, slots=True)
class VPath:
    """A normalised client path: ``area`` is None for ``/``; ``parts`` lie below the area."""

    area: str | None
    parts: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return "/" + "/".join(p for p in (self.area, *self.parts) if p)

    @property
    def is_inbox_file(self) -> bool:
        return self.area == WRITABLE_AREA and len(self.parts) == 1


@dataclass(eq=False, slots=True)
class Download:
    fd: int
    vpath: VPath


@dataclass(eq=False, slots=True)
class Upload:
    """A file being written: bytes go to ``staging``; ``target`` is where commit puts them."""

    fd: int | None
    staging: Path
    target: Path
    name: str
    readable: bool
    append: bool
    size: int = 0
    rejected: str | None = None
    resumed_from: int = 0  # bytes kept from a dropped upload this one continues
    times: Times | None = None  # set by fsetstat, applied at commit


Handle = Download | Upload


def parse_vpath(raw: bytes) -> VPath:
    """Normalise a client path; ``..`` stops at ``/`` and repeated slashes collapse.

    Names must be UTF-8 without control characters: they end up in the database, log lines and
    results file names, where undecodable bytes or a newline would be trouble.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(errno.EINVAL, "file names must be UTF-8") from None
    if "\x00" in text:
        raise OSError(errno.EINVAL, "file names cannot contain NUL")
    if _CONTROL.search(text):
        raise OSError(errno.EINVAL, "file names cannot contain control characters")
    normal = posixpath.normpath(posixpath.join("/", text))
    parts = tuple(p for p in normal.split("/") if p)
    if not parts:
        return VPath(None)
    if parts[0] not in VISIBLE_DIRS:
        raise OSError(errno.ENOENT, f"no such file or directory: {normal}")
    return VPath(parts[0], parts[1:])


def virtual_realpath(raw: bytes) -> bytes:
    """The canonical form of a client path, without touching the disk."""
    return os.fsencode(posixpath.normpath(posixpath.join("/", os.fsdecode(raw))).replace("//", "/"))


class TenantFS:
    """One tenant's tree on disk, seen through the rules above."""

    def __init__(
        self, data_dir: Path, tenant: str, max_file_bytes: int, resume_window_s: float = 0.0
    ) -> None:
        dirs = tenant_dirs(data_dir, tenant)
        self.tenant = tenant
        self.root = dirs.root
        self.inbox = dirs.inbox
        self.staging = staging_dir(data_dir)
        self.partials = partial_dir(data_dir, tenant)
        self.spool = dirs.spool
        self.max_file_bytes = max_file_bytes
        self.resume_window_s = resume_window_s
        self._real_root = os.path.realpath(self.root)

    # -- paths -------------------------------------------------------------------------------

    def _local(self, vpath: VPath) -> Path:
        if vpath.area is None:
            return self.root
        return self.root.joinpath(vpath.area, *vpath.parts)

    def _check_contained(self, vpath: VPath, directory: Path) -> None:
        """*directory* must resolve inside the area it is named under (no symlinked escape)."""
        real = os.path.realpath(directory)
        if vpath.area is None:
            allowed = self._real_root
            inside = real == allowed
        else:
            allowed = f"{self._real_root}{os.sep}{vpath.area}"
            inside = real == allowed or real.startswith(allowed + os.sep)
        if not inside:
            raise OSError(errno.ENOENT, f"no such file or directory: {vpath.text}")

    def _checked_local(self, vpath: VPath) -> Path:
        """The local path of a file: its parent directory is checked, the name itself is not."""
        local = self._local(vpath)
        if vpath.parts:
            self._check_contained(vpath, local.parent)
        return local

    def _lstat(self, vpath: VPath) -> os.stat_result:
        """lstat, treating symlinks and other oddities as absent: they are not ours to show."""
        if vpath.area is None:
            return self.root.stat()
        local = self._checked_local(vpath)
        if not vpath.parts:
            self._check_contained(vpath, local)
        try:
            st = os.lstat(local)
        except FileNotFoundError:
            raise OSError(errno.ENOENT, f"no such file or directory: {vpath.text}") from None
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise OSError(errno.ENOENT, f"no such file or directory: {vpath.text}")
        return st

    # -- read-side operations ------------------------------------------------------------------

    def stat(self, raw: bytes) -> os.stat_result:
        vpath = parse_vpath(raw)
        if vpath.is_inbox_file:
            partial = self._live_partial(vpath.parts[0])
            if partial is not None:
                return partial  # what a resuming client continues from
        return self._lstat(vpath)

    def listdir(self, raw: bytes) -> list[tuple[str, os.stat_result]]:
        vpath = parse_vpath(raw)
        if vpath.area is None:
            return [(area, self._lstat(VPath(area))) for area in VISIBLE_DIRS]
        local = self._local(vpath)
        self._check_contained(vpath, local)
        if not stat.S_ISDIR(self._lstat(vpath).st_mode):
            raise OSError(errno.ENOTDIR, f"not a directory: {vpath.text}")
        return _regular_entries(local)

    def open(self, raw: bytes, mode: OpenMode) -> Handle:
        vpath = parse_vpath(raw)
        if mode.write or mode.append or mode.create or mode.truncate:
            return self._open_upload(vpath, mode)
        return self._open_download(vpath)

    def _open_download(self, vpath: VPath) -> Download:
        local = self._checked_local(vpath)
        try:
            fd = os.open(local, _READ_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                raise OSError(errno.ENOENT, f"no such file: {vpath.text}") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EISDIR, f"not a regular file: {vpath.text}")
        return Download(fd, vpath)

    def read(self, handle: Handle, offset: int, size: int) -> bytes:
        if isinstance(handle, Upload) and not handle.readable:
            raise OSError(errno.EBADF, "file was not opened for reading")
        return os.pread(_fd(handle), min(size, MAX_READ), offset)

    def fstat(self, handle: Handle) -> os.stat_result:
        return os.fstat(_fd(handle))

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root)

    # -- uploads -------------------------------------------------------------------------------

    def _open_upload(self, vpath: VPath, mode: OpenMode) -> Upload:
        target = self._writable_target(vpath, "upload")
        name = vpath.parts[0]
        existing = _lstat_or_none(target)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise OSError(errno.EACCES, f"cannot write over {vpath.text}")
        fresh = mode.truncate or mode.exclusive
        if not fresh:
            resumed = self._claim_partial(target, name, mode)
            if resumed is not None:
                return resumed
        if existing is not None:
            if mode.exclusive:
                raise OSError(errno.EEXIST, f"file already exists: {vpath.text}")
        elif not mode.create:
            raise OSError(errno.ENOENT, f"no such file: {vpath.text}")
        upload = self._new_upload(target, name, mode)
        if fresh:
            self._partial(name).unlink(missing_ok=True)  # the client starts this file over
        elif existing is not None:
            # Opened without truncation (append): the staging copy starts as the old file.
            self._copy_existing(upload)
        return upload

    def _writable_target(self, vpath: VPath, action: str) -> Path:
        if not vpath.is_inbox_file:
            raise OSError(errno.EACCES, f"cannot {action} {vpath.text}: only files in /inbox are")
        if len(os.fsencode(vpath.parts[0])) > _NAME_MAX:
            raise OSError(errno.ENAMETOOLONG, "file name too long")
        return self._checked_local(vpath)

    def _new_upload(self, target: Path, name: str, mode: OpenMode) -> Upload:
        staging = self._staging_path()
        fd = os.open(staging, _STAGING_FLAGS, UPLOAD_MODE)
        return Upload(
            fd=fd, staging=staging, target=target, name=name, readable=mode.read, append=mode.append
        )

    def _staging_path(self) -> Path:
        return self.staging / f"{self.tenant}.{secrets.token_hex(8)}{STAGING_SUFFIX}"

    def _copy_existing(self, upload: Upload) -> None:
        try:
            shutil.copyfile(upload.target, upload.staging)  # sendfile(2) under the hood
            upload.size = os.fstat(_fd(upload)).st_size
        except BaseException:
            self.discard(upload)
            raise
        if upload.size > self.max_file_bytes:
            self.discard(upload)
            self._reject(upload)

    def reserve(self, upload: Upload, offset: int, length: int) -> int:
        """Account for a write before it is queued; return where it goes (append: at the end).

        No I/O. Past the size limit the upload is marked rejected and EFBIG raised; the caller
        discards it once no write is in flight.
        """
        if upload.rejected:
            raise OSError(errno.EFBIG, upload.rejected)
        if upload.append:
            offset = upload.size
        end = offset + length
        if end > self.max_file_bytes:
            self._reject(upload)
        upload.size = max(upload.size, end)
        return offset

    def write_chunks(self, upload: Upload, chunks: list[tuple[int, bytes]]) -> None:
        fd = _fd(upload)
        for offset, data in chunks:
            _pwrite_all(fd, data, offset)

    def _reject(self, upload: Upload) -> None:
        upload.rejected = (
            f"upload rejected: {upload.name} exceeds the maximum file size of {self.max_file_bytes} bytes"
        )
        raise OSError(errno.EFBIG, upload.rejected)

    def flush(self, upload: Upload) -> None:
        """Push written data to disk ahead of commit, so the final fsync has little left to do."""
        if upload.fd is not None:
            os.fdatasync(upload.fd)

    def commit(self, upload: Upload) -> Path:
        """Make the upload durable and move it into the inbox under its name; return that path."""
        if upload.rejected:
            raise OSError(errno.EFBIG, upload.rejected)
        try:
            fd = _fd(upload)
            if upload.times is not None:
                # After the last write (which sets mtime), before anyone can see the file.
                os.utime(fd, ns=_times_ns(upload.times, os.fstat(fd)))
            os.fsync(fd)
            os.close(fd)
            upload.fd = None
            _move_into_place(upload.staging, upload.target)
        except BaseException:
            self.discard(upload)
            raise
        # A complete upload of this name supersedes bytes kept from a dropped one.
        self._partial(upload.name).unlink(missing_ok=True)
        return upload.target

    def discard(self, upload: Upload) -> None:
        """Close and delete the staging file; safe to call more than once."""
        if upload.fd is not None:
            os.close(upload.fd)
            upload.fd = None
        upload.staging.unlink(missing_ok=True)

    def close_download(self, download: Download) -> None:
        os.close(download.fd)

    # -- dropped uploads, kept for resuming ------------------------------------------------------

    def keep_partial(self, upload: Upload) -> int:
        """The connection dropped: keep what arrived, hidden, for the resume window.

        Returns the bytes kept (0: nothing was, the upload is discarded). A newer drop of the same
        name replaces an older one.
        """
        if upload.rejected or upload.fd is None or self.resume_window_s <= 0:
            self.discard(upload)
            return 0
        try:
            size = os.fstat(upload.fd).st_size
            if size == 0:
                self.discard(upload)
                return 0
            os.close(upload.fd)
            upload.fd = None
            os.utime(upload.staging)  # the window runs from the drop, not from the first byte
            self.partials.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.replace(upload.staging, self._partial(upload.name))
        except BaseException:
            self.discard(upload)
            raise
        return size

    def _partial(self, name: str) -> Path:
        return self.partials / name

    def _live_partial(self, name: str) -> os.stat_result | None:
        """The kept part of a dropped upload of *name*, if there is one still inside its window."""
        if self.resume_window_s <= 0:
            return None
        st = _lstat_or_none(self._partial(name))
        if st is None or not stat.S_ISREG(st.st_mode):
            return None
        if time.time() - st.st_mtime > self.resume_window_s:
            return None  # expired: the sweeper deletes it
        return st

    def _claim_partial(self, target: Path, name: str, mode: OpenMode) -> Upload | None:
        """Continue a dropped upload: its file becomes this upload's staging file."""
        if self._live_partial(name) is None:
            return None
        staging = self._staging_path()
        try:
            os.rename(self._partial(name), staging)  # atomic: one session wins a partial
        except FileNotFoundError:
            return None
        fd = os.open(staging, _CLAIMED_FLAGS)
        size = os.fstat(fd).st_size
        return Upload(
            fd=fd,
            staging=staging,
            target=target,
            name=name,
            readable=mode.read,
            append=mode.append,
            size=size,
            resumed_from=size,
        )

    # -- attributes --------------------------------------------------------------------------

    def set_attributes(self, raw: bytes, times: Times | None) -> bool:
        """setstat: True when *times* were applied (to the tenant's own inbox file).

        Everything else a client may set (permissions, owner, size) is accepted and ignored, and
        so are times on a directory or on a name whose upload is still partial (its clock is the
        resume window). Files outside the inbox are read-only: any setstat there is refused.
        """
        vpath = parse_vpath(raw)
        if not vpath.parts:
            self._lstat(vpath)  # the root or an area: it exists, and stays as it is
            return False
        target = self._writable_target(vpath, "change")
        if self._live_partial(vpath.parts[0]) is not None:
            return False
        self._require_regular(target, vpath)
        current = os.lstat(target)
        if times is None or not self._only_ours(current):
            return False
        os.utime(target, ns=_times_ns(times, current), follow_symlinks=False)
        return True

    def _only_ours(self, st: os.stat_result) -> bool:
        """Whether changing this inode changes nothing but the tenant's upload: no other name has
        it, except the spool's link of a queued file (which should keep the HRIS's time too). A
        hard link planted from outside the tree is left alone."""
        if st.st_nlink == 1:
            return True
        if st.st_nlink > 2:
            return False
        try:
            with os.scandir(self.spool) as entries:
                return any(entry.inode() == st.st_ino for entry in entries)
        except FileNotFoundError:
            return False

    # -- inbox housekeeping ------------------------------------------------------------------

    def remove(self, raw: bytes) -> None:
        """Remove an inbox file, and the kept part of a dropped upload of that name."""
        vpath = parse_vpath(raw)
        target = self._writable_target(vpath, "remove")
        had_partial = self._live_partial(vpath.parts[0]) is not None
        self._partial(vpath.parts[0]).unlink(missing_ok=True)
        try:
            self._require_regular(target, vpath)
        except OSError:
            if had_partial:
                return
            raise
        target.unlink()

    def rename(self, old_raw: bytes, new_raw: bytes, *, overwrite: bool) -> tuple[str, Path]:
        """Rename within the inbox; return the old name and the new local path."""
        old, new = parse_vpath(old_raw), parse_vpath(new_raw)
        source = self._writable_target(old, "rename")
        target = self._writable_target(new, "rename to")
        self._require_regular(source, old)
        existing = _lstat_or_none(target)
        if existing is not None and (not overwrite or not stat.S_ISREG(existing.st_mode)):
            # Plain SFTP rename must not replace (posix-rename@openssh.com may, but only a file).
            raise OSError(errno.EEXIST, f"file already exists: {new.text}")
        source.replace(target)
        return old.parts[0], target

    def _require_regular(self, local: Path, vpath: VPath) -> None:
        st = _lstat_or_none(local)
        if st is None or not stat.S_ISREG(st.st_mode):
            raise OSError(errno.ENOENT, f"no such file: {vpath.text}")


def remove_stale_staging(data_dir: Path, older_than_s: float, now: float) -> list[Path]:
    """Delete staging files nobody has written to for *older_than_s* (left by a crash)."""
    removed = []
    with os.scandir(staging_dir(data_dir)) as entries:
        for entry in entries:
            if not entry.name.endswith(STAGING_SUFFIX) or not entry.is_file(follow_symlinks=False):
                continue
            if now - entry.stat(follow_symlinks=False).st_mtime > older_than_s:
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def remove_expired_partials(data_dir: Path, window_s: float, now: float) -> list[Path]:
    """Delete the kept parts of dropped uploads older than the resume window."""
    removed: list[Path] = []
    root = staging_dir(data_dir) / "partial"
    if not root.is_dir():
        return removed
    for tenant_dir in root.iterdir():
        if not tenant_dir.is_dir() or tenant_dir.is_symlink():
            continue
        with os.scandir(tenant_dir) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if now - st.st_mtime > window_s:
                    Path(entry.path).unlink(missing_ok=True)
                    removed.append(Path(entry.path))
    return removed


def _times_ns(times: Times, current: os.stat_result) -> tuple[int, int]:
    """Fill in what the client left unset; an mtime in the future is taken as now (a file cannot
    have been written later than now, and rescans wait for files to age)."""
    atime, mtime = times
    mtime_ns = current.st_mtime_ns if mtime is None else min(mtime, time.time_ns())
    return (current.st_atime_ns if atime is None else atime, mtime_ns)


def _fd(handle: Handle) -> int:
    if handle.fd is None:
        raise OSError(errno.EBADF, "file is closed")
    return handle.fd


def _lstat_or_none(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _regular_entries(directory: Path) -> list[tuple[str, os.stat_result]]:
    """Files and directories only: symlinks, sockets and fifos are not shown."""
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                found.append((entry.name, st))
    return found


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _move_into_place(staging: Path, target: Path) -> None:
    try:
        atomic_replace(staging, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Staging on another filesystem (unusual mount layout): copy next to the target under a
        # hidden name, which readers ignore, then rename; still atomic for anyone watching inbox.
        hidden = target.with_name(f".{target.name}.{secrets.token_hex(4)}{STAGING_SUFFIX}")
        shutil.copyfile(staging, hidden)
        atomic_replace(hidden, target)
        staging.unlink()
