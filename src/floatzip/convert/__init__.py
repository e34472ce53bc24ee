"""Importers of checkpoints compressed by other tools: DFloat11 (DF11), see :mod:`floatzip.convert.df11`."""
