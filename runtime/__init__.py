"""What keeps a run going: training callbacks, stopping on signals, watched data workers, inference input
staged in the graph, tensorpack internals."""
