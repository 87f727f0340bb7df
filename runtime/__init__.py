"""Workers that execute a plan's units and move activations between nodes."""
