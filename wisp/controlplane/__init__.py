"""Talking to the control plane on 15012: the config stream and the CA, client side and wire format."""
