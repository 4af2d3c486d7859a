"""The resource-owner spelling, written once: ``with`` use and a ``__repr__`` that shows state.

Every part that holds a thread, a socket, a file or a pin (STYLE habit 3) has
an idempotent ``close()``, works as a context manager and has a ``__repr__``
that says what it is doing, or that it is closed, the way gpiozero's devices
do.  :class:`Closing` supplies the last two; each owner keeps its own
``close()`` (how to stop differs from owner to owner, and only the owner knows
which lock guards its flag) and says what its repr shows:

* ``closed``: True once :meth:`close` has run (or begun; a repr never waits);
* ``_repr_state()``: the state while open, e.g. ``"pending=3 dropped=0"``;
* ``_repr_id()``: optional, what tells two instances apart (a path, a client id),
  shown open or closed.

So ``<PhotoStore /var/lib/campus-agent/photos.db pending=2 bytes=1.../...>``
and, after ``close()``, ``<PhotoStore /var/lib/campus-agent/photos.db closed>``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Self


class Closing(ABC):
    """Mixin for a resource owner: ``with`` closes it, ``repr`` shows its state or ``closed``.

    A subclass must define :attr:`closed` and an idempotent :meth:`close`
    (instantiating one that does not fails at once, not at the first stop).
    """

    @property
    @abstractmethod
    def closed(self) -> bool:
        """True once :meth:`close` has run (or begun)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the owner holds; a second call does nothing."""

    def _repr_id(self) -> str:
        """What tells two instances apart (a path, a client id); empty when there is only ever one."""
        return ""

    def _repr_state(self) -> str:
        """The state while open, as ``key=value`` pairs or a word; read without waiting for a lock."""
        return "open"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self._repr_state()
        return "<" + " ".join(part for part in (type(self).__name__, self._repr_id(), state) if part) + ">"


class ClosingFile(Closing):
    """A :class:`Closing` owner of one file: its repr names ``path``, and ``close()`` sets ``_closed``."""

    path: Path
    _closed: bool

    @property
    def closed(self) -> bool:
        return self._closed

    def _repr_id(self) -> str:
        return str(self.path)
