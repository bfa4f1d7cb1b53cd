"""Tuning: choosing settings from measurements, spending as few trials as the answer allows."""
