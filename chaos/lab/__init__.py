"""The local multi-region lab: simulated regional clusters behind WAN relays."""
