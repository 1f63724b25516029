"""autosink: a camera-controlled sink faucet that learns from its users.

Keep this file free of heavy imports: the edge runtime imports
``autosink.core.episode`` on a Raspberry Pi that has no torch.
"""

__version__ = "0.1.0"
