"""The standard circuitry plugins: detectors, data generators, model sources.

Each module is registered in the `circuitry` entry-point group of the
project's pyproject.toml, the same route a third-party plugin takes.
"""

__version__ = "0.1.0"
