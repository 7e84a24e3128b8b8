"""Recipes shipped with ftcore (package data); the ``recipes`` plugin registers them by name."""
