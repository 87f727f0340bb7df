"""Model adapters: one per family, each cuts a model into units and runs any contiguous range."""
