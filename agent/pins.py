"""Building gpiozero's pin factory from ``gpio.pin_factory``: the hardware seam.

The factory is built once and handed to every input and output, so the same
code drives real pins on a Pi (``lgpio``) and simulated ones everywhere else
(``mock``).  Backends are imported only when named, so a machine without
lgpio still installs and runs the agent.
"""

from __future__ import annotations

import importlib
from typing import Any

from agent.errors import HardwareError

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


def close_pin_factory(factory: Any) -> None:
    if factory is not None:
        factory.close()
