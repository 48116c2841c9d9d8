"""Attacks by a hostile model, each as a real test that asserts it was blocked."""
