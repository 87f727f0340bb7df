"""Network state, planning, scheduling, history and the command line."""
