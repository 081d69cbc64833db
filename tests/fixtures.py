"""Test helpers of the exporter: the export package, and tiny Hugging Face Llama models."""

import importlib


def import_export():
    """The exporter package: pyrunq4.export when installed, else the in-tree export/."""
    try:
        return importlib.import_module("pyrunq4.export")
    except Exception:
        return importlib.import_module("export")


def export_module(name):
    """A submodule of the exporter, e.g. export_module("quant")."""
    return importlib.import_module(import_export().__name__ + "." + name)
