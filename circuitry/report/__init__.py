"""Renderings of reports: console (rich) and JSON. Renderers compute nothing."""
