"""Packaging lives in setup.cfg; this file lets ``pip install -e .`` work with any setuptools."""

from setuptools import setup

setup()
