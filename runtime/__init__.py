"""What keeps a run going: training callbacks, stopping on signals, watched data workers, tensorpack internals."""
