"""Packaging for campus-edge-agent (console script ``campus-agent``)."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="campus-edge-agent",
    version="0.1.0",
    description="Panic buttons and camera health from a Raspberry Pi to a campus MQTT broker",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    packages=find_packages(include=["agent", "agent.*"]),
    package_data={"agent": ["py.typed"], "agent.schemas": ["*.json"]},
    install_requires=[
        "paho-mqtt>=2.0,<3",
        "gpiozero>=2.0",
        "PyYAML>=6.0",
        "requests>=2.28",
    ],
    extras_require={
        # picamera2 and lgpio come from apt on Raspberry Pi OS (python3-picamera2,
        # python3-lgpio); these names are for completeness and other distributions.
        "pi": ["picamera2", "lgpio"],
        "test": [
            "pytest>=8",
            "hypothesis>=6.100",
            "jsonschema>=4.20",
            "cryptography>=42",
            "mypy>=1.10",
            "ruff>=0.5",
            "types-jsonschema",
            "types-PyYAML",
            "types-requests",
        ],
    },
    entry_points={"console_scripts": ["campus-agent=agent.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: System :: Monitoring",
    ],
)
