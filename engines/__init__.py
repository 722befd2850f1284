"""How a model runs: finding and loading weights offline, and running UNet / VAE / text encoder on a runtime.

`core` talks to this package only through `engines.base.Engine`.
"""
