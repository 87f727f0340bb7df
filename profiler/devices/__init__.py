"""Shipped descriptions of real hardware classes (YAML), read by profiler.hardware.load_device."""
