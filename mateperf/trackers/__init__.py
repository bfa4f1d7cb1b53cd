"""Instruments: they measure and know nothing about scenarios or reports."""
