"""Files the config points at: paths, and who may read or change the ones that matter.

A secret (a password file, a private key) or a trust anchor (the CA, the
client certificate) that someone else can change, or read, is as good as
theirs.  So, before the agent uses one:

- **owner**: the user running the agent, or root (when root checks a config,
  as ``sudo campus-agent check-config`` does, the service user
  :data:`SERVICE_USER` counts as well).  A file planted by another user, e.g.
  in a world-writable directory, is refused;
- **never group- or world-writable** (secrets, CA and certificate alike);
- **secrets never readable by group or others**: 0600 or 0400.  The control
  group of technicians must not see them (docs/install.md);
- **readable by the service user**: root reads every file, so when root checks
  a config on a machine that has :data:`SERVICE_USER`, the agent's files are
  judged as that user will meet them (systemd/campus-agent.service), or
  ``sudo check-config`` would say OK to a service that stops at every start.

Each refusal names the file, what is wrong and the command that fixes it; a
user who may not read a file someone else owns is told to use sudo, never to
loosen a secret.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from agent.config.reader import Invalid, nonempty

SERVICE_USER = "campus-agent"
# The groups the service runs with: Group= and SupplementaryGroups= of systemd/campus-agent.service.
SERVICE_GROUPS = ("campus-agent-ctl", "gpio", "video")


def path_check(base: Path) -> Any:
    """A path; relative ones are taken from the config file's folder."""

    def check(value: Any) -> Path:
        text = nonempty(value)
        if "\x00" in text:
            raise Invalid("a path cannot contain a NUL character")
        p = Path(text).expanduser()
        return p if p.is_absolute() else (base / p)

    return check


def existing_file(base: Path) -> Any:
    """A file that exists and this user can read (nothing said about who else can)."""
    as_path = path_check(base)

    def check(value: Any) -> Path:
        p: Path = as_path(value)
        try:
            st = p.stat()
        except PermissionError:
            if _am_service():  # the agent itself, started by systemd: sudo is no fix it can apply
                raise Invalid(
                    f"cannot look into the folder of {p} as {_me()}; run 'chmod o+x {p.parent}' or keep the file "
                    "in /etc/campus-agent"
                ) from None
            raise Invalid(f"cannot look into the folder of {p} as {_me()}; run this command with sudo") from None
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise Invalid(f"file {p} not found; check the path or copy the file there")
        if not os.access(p, os.R_OK):
            raise Invalid(_unreadable(p, st))
        return p

    return check


def _name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _me() -> str:
    return _name(os.geteuid())


def _unreadable(p: Path, st: os.stat_result) -> str:
    """Why this user cannot read ``p``, and the fix: sudo when the file is someone else's."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid() and _am_service():  # the agent itself, started by systemd
        return (
            f"file {p} (owner {_name(st.st_uid)}, mode {mode:04o}) is not readable by the service user {_me()}; "
            f"run 'chown {SERVICE_USER} {p}' (a secret keeps mode 600)"
        )
    if st.st_uid != os.geteuid():
        return (
            f"file {p} (owner {_name(st.st_uid)}, mode {mode:04o}) is not readable by {_me()}; "
            "run this command with sudo (do not loosen the file's mode)"
        )
    return f"file {p} is not readable by its owner {_me()} (mode {mode:04o}); run 'chmod u+r {p}'"


def _am_service() -> bool:
    """Whether this process runs as the service user (the agent under systemd), not a technician."""
    ids = _service_ids()
    return ids is not None and ids[0] == os.geteuid()


def _service_ids() -> tuple[int, set[int]] | None:
    """The uid and groups the service runs with, or None when this machine has no service user."""
    try:
        user = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None
    gids = {g.gr_gid for g in grp.getgrall() if SERVICE_USER in g.gr_mem}
    for name in SERVICE_GROUPS:
        with contextlib.suppress(KeyError):
            gids.add(grp.getgrnam(name).gr_gid)
    return user.pw_uid, gids


def _may(st: os.stat_result, uid: int, gids: set[int], bits: tuple[int, int, int]) -> bool:
    """Whether ``uid`` in ``gids`` has the (owner, group, other) permission ``bits`` on ``st``."""
    if st.st_uid == uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in gids:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


_READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
_ENTER = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)


def service_can_read(p: Path, *, secret: bool) -> None:
    """Refuse ``p`` when root checks it and the service user could not read it.

    Only under root (anyone else can read no more than they may) and only
    where the service user exists (a developer's machine, a container).

    Raises:
        Invalid: naming the file, the service user and the ``chown``/``chmod`` that fixes it.

    """
    ids = None if os.geteuid() != 0 else _service_ids()
    if ids is None:
        return
    uid, gids = ids
    for folder in reversed(p.absolute().parents):
        st = folder.stat()
        if not _may(st, uid, gids, _ENTER):
            raise Invalid(
                f"the service user {SERVICE_USER} cannot enter {folder} (owner {_name(st.st_uid)}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}), so the agent would stop at every start: "
                f"run 'chmod o+x {folder}' or keep the file in /etc/campus-agent"
            )
    st = p.stat()
    if _may(st, uid, gids, _READ):
        return
    fix = f"chown {SERVICE_USER} {p}" if secret else f"chmod 644 {p}"
    raise Invalid(
        f"the service user {SERVICE_USER} cannot read {p} (owner {_name(st.st_uid)}, mode "
        f"{stat.S_IMODE(st.st_mode):04o}), so the agent would stop at every start: run '{fix}'"
    )


def _allowed_owners() -> set[int]:
    owners = {os.geteuid(), 0}
    if os.geteuid() == 0:
        with contextlib.suppress(KeyError):  # no such user on this machine: root and the caller only
            owners.add(pwd.getpwnam(SERVICE_USER).pw_uid)
    return owners


def _user(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def guard(p: Path, *, secret: bool) -> None:
    """Refuse ``p`` when someone other than its owner may change it, or (``secret``) read it.

    Raises:
        Invalid: naming the file, the problem and the fix.

    """
    st = p.stat()
    mode = stat.S_IMODE(st.st_mode)
    what = "it holds a secret" if secret else "the agent trusts what it says"
    fix_mode = "600" if secret else "644"
    allowed = _allowed_owners()
    if st.st_uid not in allowed:
        euid = os.geteuid()
        owner = SERVICE_USER if euid == 0 else _user(euid).split(" ")[0]
        names = " or ".join(_user(uid) for uid in sorted(allowed))
        raise Invalid(
            f"{p} is owned by {_user(st.st_uid)}, not by {names}; {what}: "
            f"check its content, then run 'chown {owner} {p}'"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise Invalid(
            f"{p} is writable by {'others' if mode & stat.S_IWOTH else 'its group'} (mode {mode:04o}); "
            f"{what}: run 'chmod {fix_mode} {p}'"
        )
    if secret and mode & (stat.S_IROTH | stat.S_IRGRP):
        who = "others" if mode & stat.S_IROTH else "its group"
        raise Invalid(f"{p} is readable by {who} (mode {mode:04o}); it holds a secret: run 'chmod 600 {p}'")


def trusted_file(base: Path, *, service: bool = True) -> Any:
    """A CA or certificate: exists, readable, owned by us or root, writable by nobody else.

    ``service``: the agent reads it, so (see :func:`service_can_read`) its service user must be
    able to; False for doctor's own files, which doctor reads under sudo.
    """
    return _guarded_file(base, secret=False, service=service)


def secret_file(base: Path, *, service: bool = True) -> Any:
    """A password or key file: as :func:`trusted_file`, and readable by its owner only."""
    return _guarded_file(base, secret=True, service=service)


def _guarded_file(base: Path, *, secret: bool, service: bool) -> Any:
    existing = existing_file(base)

    def check(value: Any) -> Path:
        p: Path = existing(value)
        guard(p, secret=secret)
        if service:
            service_can_read(p, secret=secret)
        return p

    return check
