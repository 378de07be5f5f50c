"""A tiny Flower app that checks the JavaScript node's Fleet traffic end to end (test helper)."""
