"""Thin AWS Lambda entry points: decorators plus one call into :mod:`pipeline`."""
