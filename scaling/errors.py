"""The one exception the scaling package raises for bad input, so the CLI can print one line."""


class ScalingError(ValueError):
    """Bad coefficients, an empty or negative φ range, a grid with no point: the message says which."""
