"""Building gpiozero's pin factory from ``gpio.pin_factory``: the hardware seam.

The factory is built once and handed to every input and output, so the same
code drives real pins on a Pi (``lgpio``) and simulated ones everywhere else
(``mock``).  Backends are imported only when named, so a machine without
lgpio still installs and runs the agent.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

from agent.errors import HardwareError
from agent.events import Stamp

_BACKENDS = {
    "mock": ("gpiozero.pins.mock", "MockFactory", "it ships with gpiozero"),
    "lgpio": ("gpiozero.pins.lgpio", "LGPIOFactory", "install python3-lgpio (apt) or the 'pi' extra"),
    "rpigpio": ("gpiozero.pins.rpigpio", "RPiGPIOFactory", "install python3-rpi.gpio (apt)"),
    "pigpio": ("gpiozero.pins.pigpio", "PiGPIOFactory", "install python3-pigpio and start pigpiod"),
    "native": ("gpiozero.pins.native", "NativeFactory", "it ships with gpiozero"),
}


def make_pin_factory(name: str) -> Any:
    """Return a gpiozero pin factory, or None to let gpiozero choose ("default").

    Raises:
        HardwareError: the backend cannot be loaded here, with what to install.

    """
    if name == "default":
        return None
    module_name, cls_name, hint = _BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
        return getattr(module, cls_name)()
    except Exception as exc:  # gpiozero raises several kinds when no GPIO chip exists
        raise HardwareError(
            f"gpio.pin_factory: {name} cannot be used on this machine ({type(exc).__name__}: {exc}); "
            f"{hint}, or set gpio.pin_factory: mock to simulate the pins",
        ) from exc


def is_mock(factory: Any) -> bool:
    return type(factory).__name__ == "MockFactory"


def edge_stamp(age: float | None, *, seen: Stamp, previous: float) -> Stamp:
    """When an edge happened: ``seen`` (its callback's time) less its ``age`` (:func:`edge_age`), wall time included.

    Wall and monotonic time move back by the same age, so a step of the wall
    clock moves no edge on the monotonic clock, the one debounce judges by.
    An age that puts the edge in the future or before the pin's ``previous``
    edge (monotonic seconds; ticks from another clock, a counter that wrapped)
    is not believed, nor ticks that cannot tell: the callback's time stands.
    """
    if age is None or age <= 0 or seen.mono - age < previous:
        return seen
    return Stamp(wall=seen.wall - age, mono=seen.mono - age, synced=seen.synced)


def edge_age(factory: Any, ticks: object) -> float | None:
    """Seconds since the edge that gpiozero stamped ``ticks``, or None when the ticks cannot tell.

    A pin callback gets the edge's own time as the factory's ticks (lgpio: the
    kernel's stamp; pigpio: its daemon's 32-bit microsecond counter, which
    wraps; RPi.GPIO: read when the callback runs).  Ticks are opaque: only the
    factory's ``ticks_diff`` against its own ``ticks()`` turns them into
    seconds, wrap-around included.  The mock calls back at once, on the thread
    that drives the pin, so its ticks say nothing the callback's time does not.
    Asked before the inputs' lock is taken: pigpio's ``ticks()`` is a round
    trip to its daemon.
    """
    if ticks is None or factory is None or is_mock(factory):
        return None
    try:
        age = float(factory.ticks_diff(factory.ticks(), ticks))
    except Exception:  # a factory without ticks, or ticks it cannot compare: the callback's time stands
        return None
    return age if math.isfinite(age) else None


def close_pin_factory(factory: Any) -> None:
    if factory is not None:
        factory.close()
