"""Example meshmon probe plugin (see README.md)."""

from meshmon_plugin_example.banner import BannerProbe

__all__ = ["BannerProbe"]
