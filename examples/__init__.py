"""Example data and experiment configs, shipped with ragtune as package data.

``ragtune demo`` reads ``experiment-demo.toml`` (and through it ``squad-mini/demo.json``)
from here, so the demo works from an installed wheel as well as from a checkout.
"""
