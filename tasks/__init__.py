"""Pure vision functions: arrays in, arrays and plain data out."""
