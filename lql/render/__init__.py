"""Renderers: ``table`` (rich, for terminals) and ``data`` (JSON / CSV).

Renderers only format; they never compute anything about the model.
"""
