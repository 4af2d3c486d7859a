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
  group of technicians must not see them (docs/install.md).

Each refusal names the file, what is wrong and the command that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path
from typing import Any

from agent.config.reader import Invalid, nonempty

SERVICE_USER = "campus-agent"


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
        if not p.is_file():
            raise Invalid(f"file {p} not found; check the path or copy the file there")
        if not os.access(p, os.R_OK):
            raise Invalid(f"file {p} is not readable by this user; check its owner and mode")
        return p

    return check


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


def trusted_file(base: Path) -> Any:
    """A CA or certificate: exists, readable, owned by us or root, writable by nobody else."""
    return _guarded_file(base, secret=False)


def secret_file(base: Path) -> Any:
    """A password or key file: as :func:`trusted_file`, and readable by its owner only."""
    return _guarded_file(base, secret=True)


def _guarded_file(base: Path, *, secret: bool) -> Any:
    existing = existing_file(base)

    def check(value: Any) -> Path:
        p: Path = existing(value)
        guard(p, secret=secret)
        return p

    return check
