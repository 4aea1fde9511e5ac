"""The field classes, one concern per module; ``limpyd.fields`` is their import path."""
