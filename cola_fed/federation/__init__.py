"""Flower glue: the only part of cola-fed (with cli.py) that imports flwr."""
