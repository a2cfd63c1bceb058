"""The package version, alone in a module so that any part of the package can read it without importing the
package's root (which re-exports everything): the tracer and the meter name their instrumentation with it."""

__version__ = "0.1.0"
"""This release; the single source of the package version (pyproject.toml reads it at build time)."""
