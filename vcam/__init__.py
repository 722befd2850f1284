"""vcam: the product. Sources, sinks, controls, presets, the service lifecycle and the CLI."""
__version__ = "0.1.0"
